"""The example scripts run as documented (at nano scale)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_pretrain_trainer_fit_example(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/pretrain_trainer_fit.py", "--model", "moxin-nano",
         "--max-steps", "6", "--seq-len", "32", "--batch-size", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final loss" in result.stdout
    assert (tmp_path / "hf" / "config.json").exists()
    assert (tmp_path / "hf" / "tokenizer.json").exists()
