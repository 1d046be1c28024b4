"""Chat rendering, assistant-only labels, SFT packing and loss reduction, embedded data."""

from __future__ import annotations

import random

import pytest
import torch

from moxin_core.errors import MoxinError
from moxin_core.objectives.lm import IGNORE_INDEX
from moxin_plugin_instruct.chat import render
from moxin_plugin_instruct.data import (EmbeddedInstructions, EmbeddedPreferences,
                                        extract_answer, heldout_questions, instruction_example,
                                        iter_instructions, split_of)
from moxin_plugin_instruct.sft import SFT, ConversationBuilder

from instruct_models import tiny_model

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Mia has 12 apples. She buys 7 more."},
    {"role": "assistant", "content": "12 + 7 = 19. The answer is 19."},
    {"role": "user", "content": "Now add 3 to that."},
    {"role": "assistant", "content": "19 + 3 = 22. The answer is 22."},
]


def test_exactly_the_assistant_tokens_carry_labels(tokenizer):
    ids, mask = render(tokenizer, CONVERSATION)
    # the ids are the ids the chat template gives at inference
    assert ids == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)[
        "input_ids"]
    labelled = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert labelled == ("12 + 7 = 19. The answer is 19.<|endoftext|>"
                        "19 + 3 = 22. The answer is 22.<|endoftext|>")
    rest = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert rest == ("<s><|system|>\nAnswer briefly.\n<|user|>\nMia has 12 apples. She buys 7 "
                    "more.\n<|assistant|>\n\n<|user|>\nNow add 3 to that.\n<|assistant|>\n")
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert [m for t, m in zip(ids, mask) if t == end] == [True, True]
    _, last_only = render(tokenizer, CONVERSATION, train_on="last")
    assert tokenizer.decode([t for t, m in zip(ids, last_only) if m]) == \
        "19 + 3 = 22. The answer is 22.<|endoftext|>"


@pytest.mark.parametrize("messages, fragment", [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}],
     "unknown role 'robot'"),
    ("just text", "must be a non-empty list"),
    ([], "must be a non-empty list"),
    ([{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "x"}],
     "content is list"),
])
def test_bad_conversations_are_clear_errors(tokenizer, messages, fragment):
    builder = ConversationBuilder(tokenizer, 128)
    with pytest.raises(MoxinError, match=f"data.jsonl:4.*{fragment}"):
        builder.feed({"messages": messages, "__origin__": "data.jsonl:4"})
    with pytest.raises(MoxinError, match="no field 'messages'.*conversation"):
        builder.feed({"conversation": [], "__origin__": "data.jsonl:5"})


def _records(n: int, seed: int = 0) -> list[dict]:
    return [{"messages": instruction_example(random.Random(f"t{seed}:{i}"))["messages"]}
            for i in range(n)]


def test_packing_keeps_conversations_whole_and_counts_tokens(tokenizer):
    builder = ConversationBuilder(tokenizer, 200)
    records = _records(40)
    blocks = [b for r in records for b in builder.feed(r)]
    assert blocks and all(len(b["input_ids"]) <= 200 for b in blocks)
    singles = [render(tokenizer, r["messages"])[0] for r in records]
    # blocks are whole conversations laid end to end, in order
    flat = [t for b in blocks for t in b["input_ids"]] + builder.block_ids
    assert flat == [t for ids in singles for t in ids]
    assert sum(ids.count(tokenizer.bos_token_id) for ids in (b["input_ids"] for b in blocks)) \
        + builder.block_ids.count(tokenizer.bos_token_id) == 40
    for block in blocks:
        assert block["input_ids"][0] == tokenizer.bos_token_id
    assert builder.stats["conversations"] == 40


def test_packed_conversations_do_not_see_each_other(tokenizer):
    """Logits of a conversation packed behind another equal its logits alone."""
    objective = SFT()
    builder = objective.example_builder(tokenizer, 512)
    first, second = _records(2, seed=3)
    builder.feed(first)
    builder.feed(second)
    packed = objective.collate([{"input_ids": builder.block_ids, "labels": builder.block_labels}])
    alone_ids = render(tokenizer, second["messages"])[0]
    alone = objective.collate([{"input_ids": alone_ids, "labels": alone_ids}])
    model = tiny_model().eval()
    with torch.no_grad():
        # use_cache=False as in SFT.loss: transformers then derives per-conversation masks from
        # the restarting position ids (with a cache it assumes one sequence)
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                              use_cache=False).logits[0, -len(alone_ids):]
        alone_logits = model(input_ids=alone["input_ids"]).logits[0]
    assert packed["position_ids"][0, -len(alone_ids)] == 0
    torch.testing.assert_close(packed_logits, alone_logits, atol=1e-5, rtol=1e-5)


def test_overlong_conversations_are_truncated_or_dropped_and_counted(tokenizer):
    long = {"messages": [{"role": "user", "content": "Tell me. " * 5},
                         {"role": "assistant", "content": "apple " * 80}]}
    prompt_too_long = {"messages": [{"role": "user", "content": "apple " * 200},
                                    {"role": "assistant", "content": "ok"}]}
    truncate = ConversationBuilder(tokenizer, 64, pack=False)
    (example,) = truncate.feed(long)
    assert len(example["input_ids"]) == 64 and example["labels"][-1] != IGNORE_INDEX
    assert truncate.feed(prompt_too_long) == []
    assert truncate.stats == {"conversations": 2, "truncated": 1, "dropped_overlong": 1,
                              "assistant_tokens": sum(x != IGNORE_INDEX for x in example["labels"])}
    drop = ConversationBuilder(tokenizer, 64, pack=False, overlong="drop")
    assert drop.feed(long) == [] and drop.stats["dropped_overlong"] == 1
    with pytest.raises(MoxinError, match="overlong must be one of truncate, drop"):
        SFT(overlong="cut")
    with pytest.raises(MoxinError, match="reduction must be one of sum, mean"):
        SFT(reduction="avg")


def _grads(model, objective, batches) -> torch.Tensor:
    model.zero_grad()
    for batch in batches:
        loss, _ = objective.loss(model, batch)
        (loss / len(batches)).backward()  # what Lightning does under grad accumulation
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_sum_reduction_weighs_every_token_the_same_under_accumulation(tokenizer):
    """Two micro-batches with very different token counts accumulate to the gradient of one
    batch holding both (up to the constant 1/accum) with ``sum``; with ``mean`` they do not."""
    records = _records(6, seed=5)
    results = {}
    for reduction in ("sum", "mean"):
        objective = SFT(reduction=reduction, pack=False)
        builder = objective.example_builder(tokenizer, 512)
        examples = [e for r in records for e in builder.feed(r)]
        small, large = [examples[0]], examples[1:]
        model = tiny_model()
        accumulated = _grads(model, objective, [objective.collate(small),
                                                objective.collate(large)])
        whole = _grads(model, objective, [objective.collate(small + large)])
        scale = 0.5 if reduction == "sum" else 1.0
        results[reduction] = (accumulated, whole * scale)
    torch.testing.assert_close(*results["sum"], atol=1e-6, rtol=1e-4)
    assert not torch.allclose(*results["mean"], atol=1e-6, rtol=1e-4)


def test_sum_loss_is_the_token_sum_and_metrics_are_logged(tokenizer):
    objective = SFT(reduction="sum")
    builder = objective.example_builder(tokenizer, 256)
    blocks = [b for r in _records(30) for b in builder.feed(r)][:2]
    batch = objective.collate(blocks)
    model = tiny_model()
    loss, metrics = objective.loss(model, batch)
    mean = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                 labels=batch["labels"], use_cache=False).loss
    count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    torch.testing.assert_close(loss, mean * count, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(metrics["token_loss"], mean.detach(), rtol=1e-5, atol=1e-5)
    assert objective.num_tokens(batch) == sum(len(b["input_ids"]) for b in blocks)


def test_embedded_splits_are_disjoint_and_deterministic():
    train = [e["messages"][-1]["content"] for _, e in zip(range(300), (x for _, x in
                                                                       iter_instructions(0, "train")))]
    heldout = {next(m["content"] for m in e["messages"] if m["role"] == "user")
               for _, e in zip(range(100), (x for _, x in iter_instructions(0, "heldout")))}
    train_questions = {next(m["content"] for m in e["messages"] if m["role"] == "user")
                       for _, e in zip(range(2000), (x for _, x in iter_instructions(0, "train")))}
    assert not heldout & train_questions
    assert all(split_of(q) == "heldout" for q in heldout)
    again = [e["messages"][-1]["content"] for _, e in zip(range(300), (x for _, x in
                                                                       iter_instructions(0, "train")))]
    assert train == again
    tasks = {e["task"] for _, e in zip(range(200), (x for _, x in iter_instructions(0, "train")))}
    assert tasks == {"arithmetic", "formatting", "factual"}
    multi = [e for _, e in zip(range(300), (x for _, x in iter_instructions(0, "train")))
             if sum(m["role"] == "assistant" for m in e["messages"]) > 1]
    assert multi, "some conversations have a follow-up turn"


def test_embedded_sources_resume_and_answers_parse():
    source = EmbeddedInstructions("train", num_examples=20)
    records = list(source.iter_from(None))
    resumed = list(source.iter_from(records[9][1]))
    assert [r for r, _ in resumed] == [r for r, _ in records[10:]]
    assert len(records) == 20
    pairs = [r for r, _ in EmbeddedPreferences("heldout", num_examples=30).iter_from(None)]
    assert all(p["chosen"][0]["content"] != p["rejected"][0]["content"] for p in pairs)
    for q in heldout_questions(20):
        assert isinstance(q["answer"], int) and q["messages"][-1]["role"] == "user"
    assert extract_answer("so 3 + 4 = 7. The answer is 7.") == 7
    assert extract_answer("no idea") is None
    with pytest.raises(MoxinError, match="split must be one of train, heldout"):
        EmbeddedInstructions("test")


def test_generation_marks_and_prefix_rendering_label_the_same_tokens(tokenizer):
    """The Moxin template's {% generation %} marks (transformers' assistant mask) and the
    prefix-rendering fallback for templates without marks agree on every conversation."""
    import copy

    unmarked = copy.deepcopy(tokenizer)
    unmarked.chat_template = (tokenizer.chat_template.replace("{%- generation -%}", "")
                              .replace("{%- endgeneration -%}", ""))
    assert "generation" not in unmarked.chat_template.replace("add_generation_prompt", "")
    conversations = [CONVERSATION] + [example["messages"] for (_, example), _ in
                                      zip(iter_instructions(0, "train"), range(60))]
    for messages in conversations:
        for train_on in ("all", "last"):
            assert render(tokenizer, messages, train_on) == render(unmarked, messages, train_on)
