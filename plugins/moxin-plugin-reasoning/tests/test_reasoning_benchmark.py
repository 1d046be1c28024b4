"""The GRPO step benchmark keeps running (a smoke run; the figures live in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_grpo_step_benchmark_smoke(tmp_path):
    report = tmp_path / "grpo.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/grpo_step.py", "--quick", "--steps", "4", "--json",
         str(report)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["medians"]["moxin"] > 0 and data["medians"]["trl"] > 0
    assert data["moxin_generation_seconds"] > 0 and data["moxin_update_seconds"] > 0
    assert "moxin / TRL" in result.stdout
