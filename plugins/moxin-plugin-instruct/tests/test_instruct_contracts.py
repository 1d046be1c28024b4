"""The plugin's objectives and data sources against moxin_core.testing's contract checks (the
fixtures come from the core's pytest plugin)."""

from __future__ import annotations

from itertools import islice

import pytest

from moxin_core.testing import check_data_source, check_objective
from moxin_plugin_instruct.sft import SFT


@pytest.mark.parametrize("name", ["embedded_instructions", "embedded_preferences"])
def test_the_embedded_chat_sources_keep_the_data_source_contracts(name, moxin_registry):
    factory = moxin_registry.get("data_sources", name)
    check_data_source(lambda: factory(num_examples=300))


@pytest.mark.parametrize("options", [{"reduction": "sum"}, {"reduction": "mean", "pack": False}])
def test_sft_keeps_the_objective_contracts(options, moxin_registry, moxin_tokenizer,
                                           moxin_tiny_model):
    source = moxin_registry.get("data_sources", "embedded_instructions")(num_examples=200)
    records = [r for r, _ in islice(source.iter_from(None), 64)]
    check_objective(lambda: SFT(**options), moxin_tiny_model, moxin_tokenizer, records,
                    seq_len=128)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sft_with_chunked_logits_gives_the_same_loss_and_gradients(reduction, moxin_registry,
                                                                   moxin_tokenizer,
                                                                   moxin_tiny_model):
    import torch

    from moxin_core.testing import objective_batch

    source = moxin_registry.get("data_sources", "embedded_instructions")(num_examples=200)
    records = [r for r, _ in islice(source.iter_from(None), 64)]
    results = []
    for chunk in (0, 20):
        objective = SFT(reduction=reduction, logits_chunk=chunk)
        batch = objective_batch(objective, moxin_tokenizer, records, seq_len=96, size=3)
        model = moxin_tiny_model()
        loss, metrics = objective.loss(model, batch)
        loss.backward()
        results.append((loss.detach(), metrics["token_loss"],
                        {n: p.grad for n, p in model.named_parameters()}))
    (loss, token_loss, grads), (chunked, chunked_token, chunked_grads) = results
    torch.testing.assert_close(chunked, loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked_token, token_loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    check_objective(lambda: SFT(reduction=reduction, logits_chunk=20), moxin_tiny_model,
                    moxin_tokenizer, records, seq_len=128)


def test_sft_refuses_a_batch_without_assistant_tokens_when_collating(moxin_registry,
                                                                     moxin_tokenizer):
    """Checked on the CPU when the batch is built, not in the loss (which would wait for the
    device at every step)."""
    from moxin_core.errors import MoxinError
    from moxin_plugin_instruct.sft import IGNORE_INDEX

    objective = SFT()
    source = moxin_registry.get("data_sources", "embedded_instructions")(num_examples=20)
    builder = objective.example_builder(moxin_tokenizer, 128)
    examples = [e for r, _ in islice(source.iter_from(None), 8) for e in builder.feed(r)][:2]
    assert objective.collate(examples)["labels"].ne(IGNORE_INDEX).any()
    for example in examples:
        example["labels"] = [IGNORE_INDEX] * len(example["labels"])
    with pytest.raises(MoxinError, match="without assistant tokens"):
        objective.collate(examples)
