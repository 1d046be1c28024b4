"""benchmarks/vlm_throughput.py runs and reports what docs/benchmarks.md quotes (tiny scale)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_vlm_throughput_benchmark_smoke(tmp_path):
    report = tmp_path / "vlm.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/vlm_throughput.py", "--llm", str(tmp_path / "none"),
         "--steps", "4", "--batch", "2", "--repeats", "1", "--json", str(report)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "moxin / bare tokens/s:" in result.stdout
    data = json.loads(report.read_text())
    for name in ("bare", "moxin"):
        median = data["median"][name]
        assert median["tokens_per_second"] > 0 and median["images_per_second"] > 0
        # the vision encoder ran once per image of every step, in both paths
        assert median["encoded_per_image"] == 1.0
    assert data["moxin_over_bare"] > 0
