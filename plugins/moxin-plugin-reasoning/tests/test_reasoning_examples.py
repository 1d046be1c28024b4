"""examples/grpo_trainer_fit.py runs as documented (nano scale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_grpo_trainer_fit_example(tmp_path, hf_folder):
    result = subprocess.run(
        [sys.executable, "examples/grpo_trainer_fit.py", "--model", str(hf_folder),
         "--max-steps", "2", "--generations", "2", "--max-new-tokens", "8", "--seq-len", "112",
         "--batch-size", "2", "--eval", "4", "--out", str(tmp_path / "grpo")],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "groups without reward variance" in result.stdout
    assert "held-out pass@1" in result.stdout
    assert (tmp_path / "grpo" / "hf" / "config.json").exists()
