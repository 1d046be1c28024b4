"""Kill a run with SIGKILL mid-epoch, --resume it, and get bit-identical weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from moxin_core.reporting import sha256_file
from tests.conftest import REPO, subprocess_env

STAGE = "pretrain-128"
STEPS = 40


def _command(out, tokenizer, *extra):
    settings = ["pretrain-128.model=moxin-tiny", "seq_len=64", "micro_batch_size=4",
                "checkpoint_every=4", "keep_checkpoints=2", "warmup_steps=4",
                f"tokenizer={tokenizer}"]
    return [sys.executable, "-m", "moxin_core.cli", "train", "moxin-tiny-base", "--out", str(out),
            "--stage", STAGE, "--max-steps", str(STEPS),
            *sum((["--set", s] for s in settings), []), *extra]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from moxin_core.training.blocks import ensure_embedded_tokenizer

    return ensure_embedded_tokenizer(tmp_path_factory.mktemp("tok2048") / "tokenizer", 2048)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_tokenizer):
    subprocess.run(_command(tmp_path / "full", tiny_tokenizer), check=True, capture_output=True,
                   env=subprocess_env(), cwd=REPO, timeout=900)
    reference = sha256_file(tmp_path / "full" / STAGE / "hf" / "model.safetensors")

    out = tmp_path / "killed"
    process = subprocess.Popen(_command(out, tiny_tokenizer), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=REPO)
    marker = out / STAGE / "checkpoints" / "step=000012.ckpt"
    deadline = time.time() + 600
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert marker.exists(), "the run ended before it could be killed mid-epoch"
    assert not (out / STAGE / "hf").exists(), "the run finished before the kill"
    assert not any(p.name.endswith(".partial") for p in (out / STAGE / "checkpoints").iterdir()
                   if p.name.startswith("step=000012"))

    resumed = subprocess.run(_command(out, tiny_tokenizer, "--resume"), capture_output=True,
                             text=True, env=subprocess_env(), cwd=REPO, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming stage 'pretrain-128' from" in resumed.stdout
    assert sha256_file(out / STAGE / "hf" / "model.safetensors") == reference
    # the metrics of the resumed run cover every step once
    rows = (out / STAGE / "metrics.csv").read_text().splitlines()
    assert len(rows) == STEPS + 1

    # SIGTERM (a cluster scheduler's pre-emption) stops gracefully with a checkpoint at that step
    out = tmp_path / "terminated"
    process = subprocess.Popen(_command(out, tiny_tokenizer), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO)
    marker = out / STAGE / "checkpoints" / "step=000008.ckpt"
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode != 0 and "--resume" in stderr and "Traceback" not in stderr
    assert not (out / STAGE / "hf").exists()
    resumed = subprocess.run(_command(out, tiny_tokenizer, "--resume"), capture_output=True,
                             text=True, env=subprocess_env(), cwd=REPO, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sha256_file(out / STAGE / "hf" / "model.safetensors") == reference


@pytest.mark.slow
def test_with_loader_workers_reading_ahead_a_killed_run_resumes_bit_identically(
        tmp_path, tiny_tokenizer):
    # two loader processes each prefetch batches beyond the one being trained: the checkpoint
    # must hold the position after the last *trained* batch, not after the last one read
    workers = ["--set", "data_workers=2"]
    full = subprocess.run(_command(tmp_path / "full", tiny_tokenizer, *workers),
                          capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                          timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    reference = sha256_file(tmp_path / "full" / STAGE / "hf" / "model.safetensors")

    out = tmp_path / "killed"
    killed = subprocess.run(_command(out, tiny_tokenizer, *workers), capture_output=True,
                            text=True, env=subprocess_env({"MOXIN_FAULTS": "micro-batch@15"}),
                            cwd=REPO, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / STAGE / "checkpoints" / "step=000012.ckpt").is_dir()
    resumed = subprocess.run(_command(out, tiny_tokenizer, *workers, "--resume"),
                             capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sha256_file(out / STAGE / "hf" / "model.safetensors") == reference
