"""The GGUF export benchmark keeps running (a smoke run; the figures live in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_gguf_export_benchmark_smoke(tmp_path):
    report = tmp_path / "gguf.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/gguf_export.py", "--quick", "--json", str(report)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(report.read_text())
    assert set(data["export"]) == {"f16", "q8_0"}
    for row in data["export"].values():
        for run in row["runs"]:
            assert run["seconds"] > 0 and run["export_peak_kb"] >= run["rss_before_kb"] > 0
            assert run["process_maxrss_kb"] >= run["rss_before_kb"]
    runtimes = data["generation"]["runtimes"]
    assert set(runtimes) == {"q8_0", "f16", "hf"}
    assert all(v > 0 for row in runtimes.values() for v in row["tokens_per_second"])
    assert "llama.cpp q8_0 / transformers fp32" in result.stdout


