"""benchmarks/eval_throughput.py runs and reports what docs/benchmarks.md quotes (tiny scale)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmeval_helpers import child_env

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_eval_throughput_benchmark_smoke(tmp_path):
    report = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/eval_throughput.py", "--quick", "--limit", "10",
         "--repeats", "1", "--json", str(report)],
        capture_output=True, text=True, cwd=REPO, timeout=900, env=child_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "moxin eval / lm-eval CLI requests/s:" in result.stdout
    data = json.loads(report.read_text())
    assert data["requests"] == 40
    assert set(data["medians"]) == {"lm-eval CLI (hf)", "moxin eval (hf)", "moxin eval (GGUF f32)",
                                    "moxin eval (GGUF q8_0)"}
    assert all(len(v) == 1 and v[0] > 0 for v in data["wall_seconds"].values())
    assert data["ratio_moxin_over_cli"] == pytest.approx(
        data["medians"]["lm-eval CLI (hf)"] / data["medians"]["moxin eval (hf)"])
