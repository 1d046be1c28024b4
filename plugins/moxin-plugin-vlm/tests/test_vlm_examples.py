"""examples/vlm_trainer_fit.py runs as documented (nano scale)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_vlm_trainer_fit_example(tmp_path, lm_folder):
    result = subprocess.run(
        [sys.executable, "examples/vlm_trainer_fit.py", "--llm", str(lm_folder),
         "--max-steps", "2", "--batch-size", "2", "--eval", "4", "--out", str(tmp_path / "vlm")],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out shapes questions:" in result.stdout
    saved = tmp_path / "vlm" / "hf"
    assert json.loads((saved / "moxin.json").read_text()) == {"family": "vlm"}
    assert (saved / "lm" / "config.json").exists()
