"""`moxin demo` (what `make demo` runs) end to end on the embedded defaults."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import checkpoint_logits, hf_logits_without_moxin, run_cli


@pytest.mark.slow
def test_demo_trains_exports_and_generates(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out), timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    stages = ["pretrain-128", "pretrain-256", "enhance"]
    manifests = [json.loads((out / s / "manifest.json").read_text()) for s in stages]
    assert all(m["status"] == "complete" for m in manifests)
    first, last = manifests[0]["first_loss"], manifests[-1]["last_loss"]
    assert last < 0.6 * first, (first, last)
    summary = result.stdout[result.stdout.index("moxin demo:"):]
    assert re.search(r"overall loss \d+\.\d+ -> \d+\.\d+", summary)
    assert "tokens/s" in summary and "completion:" in summary
    for stage in stages:
        assert (out / stage / "loss.png").stat().st_size > 10_000

    # the exported folder reloads with plain transformers and gives the trained model's logits
    loaded = hf_logits_without_moxin(out / "export-hf", "Question: Mia has 12 apples.")
    trained = checkpoint_logits(out / "enhance", loaded["ids"])
    torch.testing.assert_close(torch.tensor(loaded["logits"]), trained, atol=1e-5, rtol=0)
