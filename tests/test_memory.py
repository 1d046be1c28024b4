"""Memory options of a stage: activation checkpointing trains the same weights, the manifest
reports the peak memory, AdamW takes the fused kernel only on CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from moxin_core.module import build_optimizer
from moxin_core.reporting import sha256_file
from moxin_core.variants import HyperParameters
from tests.conftest import NANO_SETS, assert_clean_error, run_cli

STAGE = "pretrain-128"


def _train(out, tokenizer, *sets):
    settings = [*NANO_SETS, f"tokenizer={tokenizer}", *sets]
    return run_cli("train", "moxin-tiny-base", "--out", str(out), "--stage", STAGE,
                   "--max-steps", "4", *sum((["--set", s] for s in settings), []))


def test_activation_checkpointing_trains_the_same_weights_and_peak_memory_is_recorded(
        tmp_path, nano_tokenizer):
    plain = _train(tmp_path / "plain", nano_tokenizer)
    assert plain.returncode == 0, plain.stderr[-3000:]
    recomputed = _train(tmp_path / "ckpt", nano_tokenizer, "activation_checkpointing=true")
    assert recomputed.returncode == 0, recomputed.stderr[-3000:]
    weights = [sha256_file(tmp_path / run / STAGE / "hf" / "model.safetensors")
               for run in ("plain", "ckpt")]
    assert weights[0] == weights[1]  # recomputing activations changes no number on CPU
    manifest = json.loads((tmp_path / "ckpt" / STAGE / "manifest.json").read_text())
    assert manifest["hparams"]["activation_checkpointing"] is True
    peak = manifest["peak_memory"]["host_max_rss_bytes"]
    assert 100 * 2**20 < peak < 64 * 2**30, peak  # a python process with torch: 100 MB .. 64 GB
    assert_clean_error(_train(tmp_path / "bad", nano_tokenizer, "activation_checkpointing=maybe"),
                       "activation_checkpointing must be true or false")


def test_adamw_is_fused_only_on_cuda():
    model = torch.nn.Linear(4, 4)
    assert not build_optimizer(model, HyperParameters()).defaults["fused"]
    if torch.cuda.is_available():  # on a GPU machine the kernel is the fused one
        assert build_optimizer(model.cuda(), HyperParameters()).defaults["fused"]


def test_the_attention_kernel_is_a_setting(tmp_path, nano_tokenizer):
    eager = _train(tmp_path / "eager", nano_tokenizer, "attention=eager")
    assert eager.returncode == 0, eager.stderr[-3000:]
    manifest = json.loads((tmp_path / "eager" / STAGE / "manifest.json").read_text())
    assert manifest["hparams"]["attention"] == "eager"
    assert_clean_error(_train(tmp_path / "flex", nano_tokenizer, "attention=flex_attention",
                              "accelerator=cpu"), "no backward pass for flex attention")
    assert_clean_error(_train(tmp_path / "bad", nano_tokenizer, "attention=fast"),
                       "attention must be auto, sdpa")


@pytest.mark.slow
def test_a_compiled_stage_trains_the_same_losses_and_exports_plain_weights(tmp_path,
                                                                          nano_tokenizer):
    import csv

    from safetensors.torch import load_file

    losses = {}
    for name, sets in (("eager", []), ("compiled", ["compile=true"])):
        result = _train(tmp_path / name, nano_tokenizer, *sets)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = csv.DictReader(open(tmp_path / name / STAGE / "metrics.csv"))
        losses[name] = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses["compiled"]) == 4
    assert losses["compiled"] == pytest.approx(losses["eager"], abs=1e-4)  # inductor's fusions
    keys = load_file(tmp_path / "compiled" / STAGE / "hf" / "model.safetensors").keys()
    assert not any("_orig_mod" in k for k in keys)  # the export is a plain transformers model


def test_the_trained_model_is_prepared_with_the_memory_and_attention_settings(registry):
    """What the CLI tests above cannot see: the settings reach the model (and its frozen
    references)."""
    from moxin_core.models import resolve_model
    from moxin_core.module import MoxinModule
    from moxin_core.objectives.lm import CausalLM

    ref = resolve_model(registry, "moxin-nano")
    hp = HyperParameters(activation_checkpointing=True, attention="eager")
    module = MoxinModule(ref.family.build(ref.preset.config), CausalLM(), hp)
    module.add_frozen_model("reference")
    module._prepare_model()
    assert module.model.is_gradient_checkpointing
    assert module.model.config._attn_implementation == "eager"
    assert module.frozen["reference"].config._attn_implementation == "eager"
    ref = resolve_model(registry, "moxin-nano")  # a fresh config: the kernel is set on it
    plain = MoxinModule(ref.family.build(ref.preset.config), CausalLM(), HyperParameters())
    plain._prepare_model()
    assert not plain.model.is_gradient_checkpointing
    assert plain.model.config._attn_implementation == "sdpa"  # auto on the CPU
