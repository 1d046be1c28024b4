"""The SFT/DPO throughput benchmark keeps running (a smoke run; the figures live in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_instruct_throughput_benchmark_smoke(tmp_path):
    report = tmp_path / "instruct.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/instruct_throughput.py", "--quick", "--sft-steps", "4",
         "--dpo-steps", "4", "--json", str(report)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(report.read_text())
    for name in ("moxin", "trl_padded", "trl_packed"):
        assert data["medians"][name] > 0, name
    assert data["medians"]["dpo_precomputed"] > 0 and data["medians"]["dpo_live"] > 0
    assert data["runs"]["dpo_precomputed"][0]["precompute_seconds"] > 0
    assert "moxin / best TRL" in result.stdout and "precomputed / live" in result.stdout
