"""Shared fixtures: a small tokenizer trained once per session, CLI runner, nano-scale settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: settings that shrink a `moxin-tiny-base` stage to a seconds-long CPU run
NANO_SETS = ["pretrain-128.model=moxin-nano", "seq_len=64", "micro_batch_size=4", "warmup_steps=2",
             "checkpoint_every=2", "log_every=1"]


def run_cli(*args: str, env: dict | None = None, timeout: int = 900,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``moxin ARGS`` in a subprocess (the console script's code path)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "moxin_core.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd or REPO)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one message naming ``fragments``, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "moxin: error:" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture(scope="session")
def nano_tokenizer(tmp_path_factory) -> Path:
    """The embedded-corpus tokenizer at moxin-nano's vocabulary size (512)."""
    from moxin_core.train import ensure_embedded_tokenizer

    return ensure_embedded_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", 512)


@pytest.fixture(scope="session")
def registry():
    from moxin_core.plugins import Registry

    return Registry()
