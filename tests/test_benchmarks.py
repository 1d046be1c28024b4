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
