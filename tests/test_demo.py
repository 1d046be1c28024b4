"""`moxin demo` (what `make demo` runs) end to end on the embedded defaults."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import checkpoint_logits, hf_logits_without_moxin, run_cli


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~9 min on a quiet 2-core CPU; the suite default is 900 s per test
def test_demo_trains_exports_and_generates(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out), timeout=2400)
    assert result.returncode == 0, result.stderr[-4000:]
    stages = ["pretrain-128", "pretrain-256", "enhance"]
    manifests = [json.loads((out / s / "manifest.json").read_text()) for s in stages]
    assert all(m["status"] == "complete" for m in manifests)
    first, last = manifests[0]["first_loss"], manifests[-1]["last_loss"]
    assert last < 0.6 * first, (first, last)
    summary = result.stdout[result.stdout.index("moxin demo:"):]
    assert re.search(r"pretraining loss \d+\.\d+ -> \d+\.\d+", summary)
    assert "tokens/s" in summary and "completion:" in summary
    for stage in stages:
        assert (out / stage / "loss.png").stat().st_size > 10_000

    # the exported folder reloads with plain transformers and gives the final model's logits
    loaded = hf_logits_without_moxin(out / "export-hf", "Question: Mia has 12 apples.")
    trained = checkpoint_logits(out / "dpo", loaded["ids"])  # the demo's final stage
    torch.testing.assert_close(torch.tensor(loaded["logits"]), trained, atol=1e-5, rtol=0)

    # instruction tuning: SFT answers held-out questions far better than the base model; DPO
    # prefers the right answers on held-out pairs and does not lower answer accuracy
    stored = json.loads((out / "demo_summary.json").read_text())
    accuracy = stored["heldout_arithmetic_accuracy"]
    assert set(accuracy) == {"enhance", "sft", "dpo"}
    assert accuracy["sft"] >= 0.10 and accuracy["sft"] >= accuracy["enhance"] + 0.08, accuracy
    assert accuracy["dpo"] >= accuracy["sft"], accuracy
    assert stored["heldout_reward_accuracy"] > 0.5
    for stage in ("sft", "dpo"):
        evals = json.loads((out / stage / "eval.json").read_text())
        assert evals["heldout-arithmetic"]["accuracy"] == accuracy[stage]
        assert f"after {stage}" in summary
    assert "held-out DPO reward accuracy" in summary

    # the q8_0 GGUF answered one chat turn through llama.cpp
    assert (out / "model-q8_0.gguf").stat().st_size > 1_000_000
    assert (out / "model-q8_0.gguf.verify.json").exists()
    assert stored["gguf_chat"]["assistant"].strip()
    assert "llama.cpp chat" in summary
