"""moxin eval: the same scores as lm-eval's own command line, GGUF files scored by llama.cpp,
the suites known to lm-eval, reports, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmeval_helpers import child_env
from moxin_plugin_lmeval.run import TASKS_DIR, evaluate, task_manager
from moxin_plugin_lmeval.suites import SUITES

TINY = ["moxin_tiny_mc", "moxin_tiny_gen"]


def moxin(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moxin_core.cli", *args], capture_output=True,
                          text=True, env=child_env(**env), timeout=900)


def one_paragraph(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture(scope="module")
def manager():
    return task_manager()


def test_every_suite_task_is_known_to_lm_eval_offline(manager):
    known = set(manager.all_tasks)
    for suite in SUITES.values():
        assert set(suite.tasks) <= known, (suite.name, set(suite.tasks) - known)
    # and the open-llm suite is the DESIGN.md table: shots and metrics
    assert [(c.task, c.shots, c.metric) for c in SUITES["open-llm"].columns] == [
        ("arc_challenge", 25, "acc_norm"), ("hellaswag", 10, "acc_norm"), ("mmlu", 5, "acc"),
        ("winogrande", 5, "acc")]
    assert {c.shots for c in SUITES["zero-shot"].columns} == {0}


def test_moxin_eval_equals_lm_evals_own_command_line(hf_folder, tmp_path):
    limit = "60"
    cli = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={hf_folder},dtype=float32", "--tasks", ",".join(TINY), "--include_path",
         str(TASKS_DIR), "--limit", limit, "--batch_size", "8", "--device", "cpu",
         "--output_path", str(tmp_path / "cli")],
        capture_output=True, text=True, env=child_env(), timeout=900)
    assert cli.returncode == 0, cli.stderr[-4000:]
    (cli_file,) = (tmp_path / "cli").rglob("results_*.json")
    theirs = json.loads(cli_file.read_text())
    ours = moxin("eval", str(hf_folder), "--tasks", ",".join(TINY), "--limit", limit,
                 "--batch-size", "8", "--output-dir", str(tmp_path / "moxin"), "--json",
                 str(tmp_path / "scores.json"))
    assert ours.returncode == 0, ours.stderr[-4000:]
    (mine_file,) = (tmp_path / "moxin").glob("results_*.json")
    mine = json.loads(mine_file.read_text())
    for task in TINY:
        metrics = {k: v for k, v in theirs["results"][task].items() if "," in k}
        assert metrics and {k: mine["results"][task][k] for k in metrics} == metrics, task
        assert mine["n-samples"][task] == theirs["n-samples"][task]
    assert mine["n-samples"]["moxin_tiny_mc"]["effective"] == int(limit)
    scores = json.loads((tmp_path / "scores.json").read_text())
    (row,) = scores["models"]
    assert row["model"] == hf_folder.parent.name  # a model folder named hf: its stage's name
    assert row["scores"]["moxin_tiny_mc"] == theirs["results"]["moxin_tiny_mc"]["acc,none"]


def _choices(scores) -> list[int]:
    samples = sorted(scores.results["samples"]["moxin_tiny_mc"], key=lambda s: s["doc_id"])
    return [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0])
            for s in samples]


def test_gguf_files_are_scored_by_llama_cpp(hf_folder, gguf, manager):
    limit = 300
    hf = evaluate(str(hf_folder), tasks=TINY, limit=limit, manager=manager, log_samples=True)
    f32 = evaluate(str(gguf("f32")), tasks=TINY, limit=limit, manager=manager, log_samples=True)
    q8 = evaluate(str(gguf("q8_0")), tasks=TINY, limit=limit, manager=manager, log_samples=True)
    assert q8.label == "m.q8_0.gguf"
    # f32: the same choice on every question (the model's choices vary: no constant answer), and
    # the same replies
    assert len(set(_choices(hf))) == 4
    assert _choices(f32) == _choices(hf)
    assert f32.values == hf.values
    # q8_0: multiple-choice accuracy within 2 points
    assert abs(q8.values["moxin_tiny_mc"] - hf.values["moxin_tiny_mc"]) <= 0.02, \
        (q8.values, hf.values)
    assert hf.values["moxin_tiny_gen"] is not None


def test_reports_compare_models_and_draw_a_chart(hf_folder, gguf, tmp_path):
    result = moxin("eval", str(hf_folder), str(gguf("q8_0")), "--suite", "tiny", "--limit", "20",
                   "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    table = (tmp_path / "table.md").read_text()
    assert "| Models | tiny-mc | tiny-gen | Ave |" in table
    assert f"| **{hf_folder.parent.name}** |" in table and "| **m.q8_0.gguf** |" in table
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(tmp_path.glob("results_*.json"))) == 2
    assert "--limit 20: scores on part of each task" in result.stdout


def test_a_readme_suite_prints_the_readmes_rows_beside_the_model():
    from moxin_plugin_lmeval.report import report
    from moxin_plugin_lmeval.run import Scores

    columns = list(SUITES["open-llm"].columns)
    run = Scores("mine", columns, {"ARC-C": 0.5, "Hellaswag": 0.25, "MMLU": 0.3,
                                   "WinoGrade": 0.55})
    text = report([run], "open-llm")
    assert "| **mine** | 50.00 | 25.00 | 30.00 | 55.00 | 40.00 |" in text
    assert "| Moxin-7B-Enhanced (Moxin-7B-Base) | 59.47 | 83.08 | 60.97 | 78.69 | 70.55 |" in text
    assert "| Moxin-7B-DPO (Moxin-7B-Instruct) | 64.76 | 87.19 | 58.36 | 76.32 | 71.66 |" in text
    assert "Reference rows: The Moxin README" in text
    assert "ARC-C 25-shot acc_norm" in text


def test_bad_input_is_one_clear_paragraph(hf_folder, tmp_path):
    one_paragraph(moxin("eval", str(hf_folder), "--tasks", "moxin_tiny_mcq"),
                  "Unknown lm-eval task 'moxin_tiny_mcq'", "close: moxin_tiny_mc")
    one_paragraph(moxin("eval", str(hf_folder), "--suite", "everything"),
                  "Unknown suite 'everything'", "open-llm", "zero-shot", "reasoning", "tiny")
    one_paragraph(moxin("eval", str(hf_folder), "--tasks", "arc_easy", "--limit", "2"),
                  "Task 'arc_easy' needs the data set allenai/ai2_arc (ARC-Easy)",
                  "--include-path")
    one_paragraph(moxin("eval", str(hf_folder), "--suite", "tiny", "--limit", "-3"),
                  "--limit must be positive")
    one_paragraph(moxin("eval", str(hf_folder), "--suite", "tiny", "--num-fewshot", "-1"),
                  "--num-fewshot must be 0 or more")
    one_paragraph(moxin("eval", str(tmp_path / "nowhere"), "--suite", "tiny"),
                  "is none of: a stage folder", "a .gguf file")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    one_paragraph(moxin("eval", str(text), "--suite", "tiny"), "is a file but not a GGUF file")
    one_paragraph(moxin("eval", str(hf_folder), "--suite", "tiny", "--include-path",
                        str(tmp_path / "missing")), "--include-path", "no such folder")
    one_paragraph(moxin("eval", str(hf_folder)), "Give either --suite NAME or --tasks")


def test_include_path_adds_the_users_own_tasks(hf_folder, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "my_task.yaml").write_text((TASKS_DIR / "moxin_tiny_mc.yaml").read_text()
                                         .replace("task: moxin_tiny_mc", "task: my_task")
                                         .replace("!function moxin_tiny.",
                                                  "!function helper."))
    (folder / "helper.py").write_text((TASKS_DIR / "moxin_tiny.py").read_text())
    result = moxin("eval", str(hf_folder), "--tasks", "my_task", "--limit", "10",
                   "--include-path", str(folder), "--json", "-")
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert payload["columns"][0]["task"] == "my_task"
    assert 0.0 <= payload["models"][0]["scores"]["my_task"] <= 1.0


def test_competition_answers_are_checked_from_the_last_box():
    """moxin_amc and moxin_olympiadbench (not in lm-eval; their data needs the hub): the last
    \\boxed{} against the reference, equivalent forms accepted."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("moxin_math", TASKS_DIR / "moxin_math.py")
    math = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(math)
    assert math.last_boxed(r"so \boxed{3} then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert math.last_boxed("no box") is None and math.last_boxed(r"\boxed{unclosed") is None
    amc = {"problem": "What is 1/2 + 1/4?", "answer": "0.75"}
    assert math.process_results(amc, [r"It is \boxed{\frac{3}{4}}."]) == {"exact_match": 1}
    assert math.process_results(amc, [r"\boxed{0.75}"]) == {"exact_match": 1}
    assert math.process_results(amc, [r"\boxed{0.7}"]) == {"exact_match": 0}
    assert math.process_results(amc, ["0.75"]) == {"exact_match": 0}  # no box, no credit
    olympiad = {"question": "Find x.", "final_answer": ["$2\\sqrt{2}$"]}
    assert math.answer_of(olympiad) == "$2\\sqrt{2}$"
    assert math.process_results(olympiad, [r"\boxed{2\sqrt{2}}"]) == {"exact_match": 1}
    assert math.doc_to_text(amc).endswith("output the final answer within \\boxed{}.")


def test_gguf_edge_requests_empty_continuation_and_long_generation(gguf):
    from types import SimpleNamespace

    from moxin_plugin_lmeval.gguf_lm import GGUFLM

    lm = GGUFLM(gguf("f32"))
    context = lm.tok_encode("Question: Mia has 12 apples.")
    # nothing to score: what lm-eval's HFLM answers, not a crash
    assert lm._loglikelihood_tokens([(None, context, [])], disable_tqdm=True) == [(0.0, True)]
    # a continuation longer than the window: scored over what fits
    (total, _), = lm._loglikelihood_tokens([(None, context, [5] * (lm.max_length + 10))],
                                           disable_tqdm=True)
    assert total < 0
    # a task asking for more new tokens than the window holds is cut to fit (AMC asks 8192)
    request = SimpleNamespace(args=("Question: What is 2 + 3?\nAnswer:",
                                    {"until": ["\n"], "max_gen_toks": 10 * lm.max_length}))
    (reply,) = lm.generate_until([request], disable_tqdm=True)
    assert isinstance(reply, str) and "\n" not in reply
    alias = SimpleNamespace(args=("Question: What is 2 + 3?\nAnswer:",
                                  {"until": [], "max_new_tokens": 3}))
    (short,) = lm.generate_until([alias], disable_tqdm=True)
    assert len(lm.tok_encode(short, add_special_tokens=False)) <= 3
