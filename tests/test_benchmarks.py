"""The benchmark scripts keep running (a smoke run; the figures themselves live in docs/)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_train_throughput_benchmark_smoke(tmp_path):
    report = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "--repeats", "1", "--steps", "5",
         "--precision", "32-true", "--pack-seq-lens", "128", "--json", str(report)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    text = json.dumps(json.loads(report.read_text()))
    for key in ("32-true", "moxin", "bare", "mfu", "efficiency"):
        assert key in text.lower(), key


@pytest.mark.slow
def test_gguf_export_benchmark_smoke(tmp_path):
    pytest.importorskip("llama_cpp")
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


@pytest.mark.slow
def test_instruct_throughput_benchmark_smoke(tmp_path):
    pytest.importorskip("trl")
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
