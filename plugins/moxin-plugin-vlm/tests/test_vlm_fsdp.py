"""The VLM under FSDP (2 ranks on this CPU, gloo): built on the meta device, sharded block by
block (decoder layers and vision blocks), materialised with the language model's inherited
weights, trained with the vision tower frozen, and exported whole."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from moxin_core.testing import subprocess_env

pytestmark = pytest.mark.slow


def _train(out, lm_folder, *extra: str) -> subprocess.CompletedProcess:
    sets = [f"vlm.references.llm={lm_folder}", "devices=2", "strategy=fsdp",
            "accelerator=cpu", "micro_batch_size=2", "max_steps=3", "checkpoint_every=1",
            "keep_checkpoints=3", "lr=1e-5", "warmup_ratio=0", "vlm.evaluators=[]",
            "vlm.evaluate_start=false", "vlm.objective_options.trainable=finetune", *extra]
    return subprocess.run([sys.executable, "-m", "moxin_core.cli", "train", "moxin-tiny-vlm",
                           "--out", str(out), *sum((["--set", s] for s in sets), [])],
                          capture_output=True, text=True, env=subprocess_env(), timeout=900)


def test_fsdp_trains_the_vlm_from_its_language_models_weights(tmp_path, lm_folder):
    result = _train(tmp_path, lm_folder)
    if result.returncode != 0 and "Connection closed by peer" in result.stderr:
        # gloo's TCP transport on this CPU dropped a rank once in ~6 fresh runs (a rank's own
        # error never reached the log); one clean retry in a new folder, the checks unchanged
        tmp_path = tmp_path / "retry"
        result = _train(tmp_path, lm_folder)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "stage vlm: 3 steps" in result.stdout and "on 2 ranks" in result.stdout
    stage = tmp_path / "vlm"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["steps"] == 3

    # the language model started from the referenced one (3 steps at lr 1e-5 move a weight by
    # about 3e-5; a random start would differ by the weights' own size), its <PAD> and padding
    # rows added
    lm = load_file(stage / "hf" / "lm" / "model.safetensors")
    source = load_file(lm_folder / "model.safetensors")
    for name, value in source.items():
        rows = value.shape[0]
        torch.testing.assert_close(lm[name][:rows], value, rtol=0, atol=2e-4, msg=name)
    assert lm["model.embed_tokens.weight"].shape[0] % 64 == 0
    assert lm["model.embed_tokens.weight"].shape[0] > source["model.embed_tokens.weight"].shape[0]
    assert any(not torch.equal(lm[n], v) for n, v in source.items())  # and it trained

    # finetune: the vision tower frozen from step 1 to the export, the projector trained; the
    # export is the gathered checkpoint
    first = load_file(stage / "checkpoints" / "step=000001.ckpt" / "model.safetensors")
    last = load_file(stage / "checkpoints" / "step=000003.ckpt" / "model.safetensors")
    vision = load_file(stage / "hf" / "vision.safetensors")
    projector = load_file(stage / "hf" / "projector.safetensors")
    assert vision and all(torch.equal(v, first[f"model.vision.{k}"]) for k, v in vision.items())
    assert all(torch.equal(v, last[f"model.projector.{k}"]) for k, v in projector.items())
    assert any(not torch.equal(v, first[f"model.projector.{k}"]) for k, v in projector.items())
    # the fused-tower normalisation buffers and the rest are whole: the export reloads and runs
    from moxin_core.api import load_model

    model, processor, family = load_model(str(stage))
    assert family.name == "vlm"
    pixels = torch.rand(1, 3, processor.transform.size, processor.transform.size)
    out = model(torch.tensor([[1, 5, 6]]), pixel_values=pixels)
    assert torch.isfinite(out.logits).all()
