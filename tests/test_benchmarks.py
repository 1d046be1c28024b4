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
    data = json.loads(report.read_text())
    assert set(data["training"]) == {"32-true"}
    row = data["training"]["32-true"]
    assert (row["steps"], row["micro_batch_size"], row["seq_len"]) == (5, 8, 128)
    assert len(row["bare"]) == len(row["moxin"]) == 1
    assert row["bare"][0] > 0 and row["moxin"][0] > 0
    assert row["ratio"] == pytest.approx(row["moxin_median"] / row["bare_median"])
    assert 0 < row["mfu_bare"] < 1 and 0 < row["mfu_moxin"] < 1
    assert row["flops_per_token"] > 6 * row["n_matmul_params"]  # plus attention
    # both paths trained the same model on the same data from the same start
    (bare_first, _), (moxin_first, _) = row["losses"]["bare"][0], row["losses"]["moxin"][0]
    assert bare_first == pytest.approx(moxin_first, abs=1e-4)
    (pack,) = data["packing"]
    assert pack["seq_len"] == 128 and 0.99 <= pack["efficiency"] <= 1.0
    assert pack["tokens_per_second"] > 0 and pack["documents"] == 20000
    assert "moxin/bare" in result.stdout


@pytest.mark.slow
def test_ddp_throughput_benchmark_smoke(tmp_path):
    report = tmp_path / "ddp.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/ddp_throughput.py", "--rounds", "1", "--steps", "5",
         "--batch", "4", "--json", str(report)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(report.read_text())
    (one,), (two,) = data["runs"]["1"], data["runs"]["2"]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["tokens"] == 2 * one["tokens"] == 2 * 5 * 4 * 128  # all ranks counted
    assert one["tokens_per_second"] > 0 and two["tokens_per_second"] > 0
    assert data["ratio"] == pytest.approx(two["tokens_per_second"] / one["tokens_per_second"])
    assert "2 DDP processes / 1 process" in result.stdout


@pytest.mark.slow
def test_gpu_throughput_benchmark_runs_on_the_cpu(tmp_path):
    # the GPU benchmark's smoke run: same code path, the tiny model, on this CPU
    report = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--device", "cpu", "--steps", "5",
         "--repeats", "1", "--json", str(report)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(report.read_text())
    assert (data["device"], data["size"], data["steps"]) == ("CPU", "tiny", 5)
    bare, moxin = data["runs"]["bare"][0], data["runs"]["moxin"][0]
    assert bare["tokens_per_second"] > 0 and moxin["tokens_per_second"] > 0
    # the same starting weights on the same batches: the first losses differ only by the
    # document mask (the bare loop attends across packed documents, moxin does not)
    assert bare["first_loss"] == pytest.approx(moxin["first_loss"], abs=0.05)
    assert bare["first_loss"] != moxin["first_loss"]
    assert 0 < data["bare_mfu"] < 1 and 0 < data["moxin_mfu"] < 1
    assert data["ratio"] == pytest.approx(data["moxin_median"] / data["bare_median"])
    assert "| bare |" in result.stdout and "moxin/bare =" in result.stdout


@pytest.mark.slow
def test_gpu_throughput_compile_and_lora_paths_run_on_the_cpu(tmp_path):
    """The GPU benchmark's other paths (compile=true; LoRA SFT, tiny in place of moxin-7b)."""
    report = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--device", "cpu", "--steps", "4",
         "--repeats", "1", "--paths", "moxin", "compile", "lora", "--json", str(report)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(report.read_text())
    assert set(data["runs"]) == {"moxin", "compile"} and "ratio" not in data
    compiled, eager = data["runs"]["compile"][0], data["runs"]["moxin"][0]
    assert compiled["tokens_per_second"] > 0
    assert compiled["first_loss"] == pytest.approx(eager["first_loss"], abs=1e-3)
    lora = data["lora"]
    assert lora["model"] == "tiny" and lora["steps"] == 4
    assert lora["last_loss"] < lora["first_loss"]
    assert "LoRA r=16 SFT of tiny: 4 steps" in result.stdout
