"""examples/sft_trainer_fit.py and examples/dpo_trainer_fit.py run as documented (nano scale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=900)


def test_sft_then_dpo_examples(tmp_path, hf_folder):
    sft = _run("examples/sft_trainer_fit.py", "--model", str(hf_folder), "--max-steps", "3",
               "--seq-len", "128", "--batch-size", "2", "--out", str(tmp_path / "sft"))
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert "per assistant token" in sft.stdout
    dpo = _run("examples/dpo_trainer_fit.py", "--model", str(tmp_path / "sft" / "hf"),
               "--max-steps", "2", "--seq-len", "128", "--batch-size", "2",
               "--out", str(tmp_path / "dpo"))
    assert dpo.returncode == 0, dpo.stderr[-3000:]
    assert "reward accuracy" in dpo.stdout
    stored = torch.load(tmp_path / "dpo" / "reference_logps.pt", weights_only=True)
    assert stored["logps"].shape == (4, 4)
    assert (tmp_path / "dpo" / "hf" / "config.json").exists()
