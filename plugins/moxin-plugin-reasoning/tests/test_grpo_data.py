"""Prompt data (embedded problems, JSONL/Parquet in DeepScaleR's fields) and GRPO's bad-input
handling: missing fields, over-long prompts, rewards that raise or return None/NaN."""

from __future__ import annotations

import json
import re

import pytest
import torch

from moxin_core.api import DataSpec, Registry, build_datamodule
from moxin_core.errors import MoxinError
from moxin_plugin_reasoning.data import EmbeddedProblems, EmbeddedReasoning
from moxin_plugin_reasoning.grpo import GRPO
from moxin_plugin_reasoning.problems import (INSTRUCTION, heldout_problems, iter_problems,
                                             split_of)

from reasoning_models import tiny_model


def _records(source, n):
    return [r for (r, _), _ in zip(source.iter_from(None), range(n))]


def test_embedded_problems_graded_and_split_by_a_hash_of_the_question():
    train = _records(EmbeddedProblems("train", num_examples=400), 400)
    heldout = heldout_problems(100)
    assert {r["level"] for r in train} == {1, 2, 3, 4}
    assert not {r["problem"] for r in train} & {p["problem"] for p in heldout}
    assert all(split_of(p["problem"]) == "heldout" for p in heldout)
    assert len({p["problem"] for p in heldout}) == 100
    # byte-identical on every call; the seed changes the problems
    assert _records(EmbeddedProblems("train", num_examples=5), 5) == train[:5]
    other = _records(EmbeddedProblems("train", seed=1, num_examples=5), 5)
    assert [r["problem"] for r in other] != [r["problem"] for r in train[:5]]
    easy = _records(EmbeddedProblems("train", levels=[1], num_examples=20), 20)
    assert {r["level"] for r in easy} == {1}
    with pytest.raises(MoxinError, match="levels"):
        EmbeddedProblems(levels=[5])
    with pytest.raises(MoxinError, match="distinct held-out problems"):
        heldout_problems(500, levels=(1,))  # sums up to 20: too few distinct questions


def test_answers_are_right_and_solutions_end_boxed():
    from moxin_plugin_reasoning.rewards import MathReward

    problems = [p for _, (_, p) in zip(range(200), iter_problems(0, "train"))]
    solutions = [p["solution"] for p in problems]
    assert MathReward()([], solutions, answer=[p["answer"] for p in problems]) == [1.0] * 200
    conversation = _records(EmbeddedReasoning(num_examples=1), 1)[0]["messages"]
    assert conversation[0]["content"].endswith(INSTRUCTION)
    assert conversation[1]["content"].endswith("}.")
    # every equation of the working holds ("6 * 7 = 42, and 42 + 5 = 47.")
    for problem in problems:
        work = problem["solution"].rsplit(" The answer is", 1)[0]
        for left, right in re.findall(r"(\d+(?: [-+*/] \d+)+) = ([\d.]+)", work):
            assert float(eval(left)) == float(right), (problem["problem"], work)  # noqa: S307


def test_direct_share_answers_that_share_without_working():
    from moxin_plugin_reasoning.problems import boxed

    worked = _records(EmbeddedReasoning(num_examples=400, levels=[3]), 400)
    half = _records(EmbeddedReasoning(num_examples=400, levels=[3], direct_share=0.5), 400)
    replies = [(w["messages"][1]["content"], h["messages"][1]["content"])
               for w, h in zip(worked, half)]
    direct = [h for w, h in replies if h != w]
    # the same problems; a direct reply is the worked one's last sentence alone
    assert [w["messages"][0] for w in worked] == [h["messages"][0] for h in half]
    assert all(w.endswith(" " + h) and h.startswith("The answer is") for w, h in replies
               if h != w)
    assert 0.4 < len(direct) / len(replies) < 0.6
    # chosen by the question, not by its position: the same question is always treated alike
    again = _records(EmbeddedReasoning(seed=7, num_examples=400, levels=[3], direct_share=0.5), 400)
    by_question = {h["messages"][0]["content"]: h["messages"][1]["content"] for h in half}
    shared = [r for r in again if r["messages"][0]["content"] in by_question]
    assert shared and all(by_question[r["messages"][0]["content"]] == r["messages"][1]["content"]
                          for r in shared)
    everything = _records(EmbeddedReasoning(num_examples=50, direct_share=1.0), 50)
    problems = [p for _, (_, p) in zip(range(50), iter_problems(0, "train"))]
    assert [r["messages"][1]["content"] for r in everything] == [boxed(p["answer"])
                                                                  for p in problems]
    assert (EmbeddedReasoning(direct_share=0.5).fingerprint()
            != EmbeddedReasoning().fingerprint())
    with pytest.raises(MoxinError, match="direct_share must be in"):
        EmbeddedReasoning(direct_share=1.5)


def _datamodule(tokenizer, data, objective, seq_len=160, batch=2):
    return build_datamodule(Registry(), data, objective, tokenizer, seq_len, batch)


def test_deepscaler_fields_from_jsonl_and_parquet_work_as_they_are(tmp_path, tokenizer):
    rows = [{"problem": "What is 2 + 2?", "answer": "4", "solution": "2 + 2 = 4"},
            {"problem": "Half of one?", "answer": "\\frac{1}{2}", "solution": "..."}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    objective = GRPO(num_generations=2, max_new_tokens=16)
    for name in ("train.jsonl", "train.parquet"):
        data = [DataSpec("files", 1.0, {"paths": str(tmp_path / name)})]
        batch = next(_datamodule(tokenizer, data, objective).iter_batches())
        assert [f["answer"] for f in batch["fields"]] == ["4", "\\frac{1}{2}"]
        assert batch["fields"][0]["solution"] == "2 + 2 = 4"  # other fields reach the rewards
        text = tokenizer.decode(batch["prompt_ids"][0][batch["prompt_mask"][0].bool()])
        assert "What is 2 + 2? " + INSTRUCTION in text and text.rstrip().endswith("<|assistant|>")
        assert name in batch["origins"][0]
    # other field names are options
    (tmp_path / "mine.jsonl").write_text(json.dumps({"q": "What is 1 + 1?", "a": 2}) + "\n")
    objective = GRPO(num_generations=2, max_new_tokens=16, question_field="q", answer_field="a")
    data = [DataSpec("files", 1.0, {"paths": str(tmp_path / "mine.jsonl")})]
    batch = next(_datamodule(tokenizer, data, objective, batch=1).iter_batches())
    assert batch["fields"][0]["answer"] == "2"


def test_records_without_the_answer_or_question_name_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}) + "\n"
                    + json.dumps({"problem": "What is 2 + 2?", "solution": "4"}) + "\n")
    data = [DataSpec("files", 1.0, {"paths": str(path)})]
    with pytest.raises(MoxinError, match=r"bad\.jsonl:2: no answer field 'answer'.*answer_field"):
        next(_datamodule(tokenizer, data, GRPO(num_generations=2, max_new_tokens=16)
                         ).iter_batches())
    path.write_text(json.dumps({"task": "What is 1 + 1?", "answer": "2"}) + "\n")
    with pytest.raises(MoxinError, match=r"bad\.jsonl:1: no question field.*question_field"):
        next(_datamodule(tokenizer, data, GRPO(num_generations=2, max_new_tokens=16)
                         ).iter_batches())


def test_prompts_longer_than_the_budget_are_skipped_and_counted(tmp_path, tokenizer):
    rows = [{"problem": "What is 2 + 2?", "answer": "4"},
            {"problem": "word " * 200, "answer": "1"},
            {"problem": "What is 3 + 3?", "answer": "6"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    objective = GRPO(num_generations=2, max_new_tokens=32)
    builder = objective.example_builder(tokenizer, 128)
    examples = [e for r in _records_of(tmp_path / "p.jsonl") for e in builder.feed(r)]
    assert len(examples) == 2
    assert builder.state_dict()["stats"] == {"prompts": 2, "skipped_too_long": 1}
    assert all(len(e["prompt_ids"]) <= 128 - 32 for e in examples)
    with pytest.raises(MoxinError, match="raise seq_len"):
        objective.example_builder(tokenizer, 36)


def _records_of(path):
    from moxin_core.data.sources import Files

    return [r for r, _ in Files(str(path)).iter_from(None)]


def _batch(tokenizer, objective, n=2):
    builder = objective.example_builder(tokenizer, 128)
    records = _records(EmbeddedProblems(num_examples=n), n)
    return objective.collate([e for r in records for e in builder.feed(r)])


@pytest.mark.parametrize("bad, message", [
    (lambda p, c, **k: 1 / 0, "reward function 'bad' raised ZeroDivisionError"),
    (lambda p, c, **k: [None] * len(c), "reward function 'bad' returned None"),
    (lambda p, c, **k: [float("nan")] * len(c), "reward function 'bad' returned nan"),
    (lambda p, c, **k: [1.0], "returned 1 rewards for 8 completions"),
])
def test_a_bad_reward_function_is_named_with_the_record(tokenizer, bad, message):
    objective = GRPO(num_generations=4, max_new_tokens=8, beta=0.0,
                     reward_functions={"bad": bad})
    batch = _batch(tokenizer, objective)
    with pytest.raises(MoxinError, match=message) as info:
        objective.loss(tiny_model(), batch)
    if "rewards for" not in message:
        assert "embedded_problems[train, seed=0]:" in str(info.value)


def test_a_reward_that_fails_on_one_record_names_that_record(tokenizer):
    bad = {}

    def picky(prompts, completions, answer, **_):
        if bad["answer"] in answer:
            raise ValueError("cannot score this one")
        return [0.0] * len(completions)

    objective = GRPO(num_generations=2, max_new_tokens=8, beta=0.0,
                     reward_functions={"picky": picky})
    batch = _batch(tokenizer, objective, 3)
    bad["answer"] = batch["fields"][1]["answer"]
    assert bad["answer"] not in (batch["fields"][0]["answer"], batch["fields"][2]["answer"])
    with pytest.raises(MoxinError, match="reward function 'picky' raised ValueError") as info:
        objective.loss(tiny_model(), batch)
    assert batch["origins"][1] in str(info.value)
    assert batch["origins"][0] not in str(info.value)


def test_one_step_logs_the_rollout_statistics(tokenizer):
    objective = GRPO(num_generations=4, max_new_tokens=8, beta=0.0,
                     reward_functions={"len": lambda p, c, completion_ids, **_: [
                         float(len(x)) for x in completion_ids]}, temperature=1.0)
    batch = _batch(tokenizer, objective)
    loss, metrics = objective.loss(tiny_model(), batch)
    assert torch.isfinite(loss)
    for name in ("reward", "reward_std", "rewards/len/mean", "rewards/len/std",
                 "zero_std_groups", "clip_ratio/low", "clip_ratio/high",
                 "completion/mean_length", "completion/max_length", "completion/truncated",
                 "generation/tokens_per_s"):
        assert name in metrics, name
    assert 1 <= metrics["completion/mean_length"] <= metrics["completion/max_length"] <= 8
    assert metrics["rewards/len/mean"] == metrics["completion/mean_length"]
    assert metrics["generation/tokens_per_s"] > 0
