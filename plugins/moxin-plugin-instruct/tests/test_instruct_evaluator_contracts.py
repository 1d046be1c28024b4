"""The plugin's held-out evaluators against moxin_core.testing's evaluator contracts (cheap
factories, unknown options refused, finite deterministic scores, the model folders left alone),
on the core's tiny model folder fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moxin_core.testing import check_evaluator


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory, moxin_tiny_model, moxin_tokenizer,
                     moxin_tokenizer_dir) -> Path:
    """The tiny model with other weights: the model a DPO stage would have started from."""
    from moxin_core.api import save_model

    model = moxin_tiny_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape,
                                              generator=torch.Generator().manual_seed(1)))
    return save_model(model, moxin_tokenizer, tmp_path_factory.mktemp("reference") / "model",
                      moxin_tokenizer_dir)


def test_heldout_arithmetic_keeps_the_evaluator_contracts(moxin_registry, moxin_model_folder):
    scores = check_evaluator(moxin_registry.get("evaluators", "heldout-arithmetic"),
                             moxin_model_folder, {"num": 6, "max_new_tokens": 8})
    assert set(scores) == {"accuracy", "answered", "n"} and scores["n"] == 6.0


def test_heldout_preferences_keeps_the_evaluator_contracts(moxin_registry, moxin_model_folder,
                                                           reference_folder):
    scores = check_evaluator(moxin_registry.get("evaluators", "heldout-preferences"),
                             moxin_model_folder, {"num": 8}, reference=reference_folder)
    assert scores["n"] == 8.0 and scores["margin"] != 0.0  # the reference really was another model
