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
            cwd: Path | None = None, input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run ``moxin ARGS`` in a subprocess (the console script's code path)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "moxin_core.cli", *args], capture_output=True,
                          text=True, input=input_text, env=full_env, timeout=timeout, cwd=cwd or REPO)


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


def hf_logits_without_moxin(hf_dir: Path, text: str) -> dict:
    """Load ``hf_dir`` with plain transformers in a process where moxin cannot be imported."""
    import json

    code = f"""
import sys, json
sys.modules["moxin_core"] = None  # any import of moxin would fail
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(hf_dir)!r})
model = AutoModelForCausalLM.from_pretrained({str(hf_dir)!r}).eval()
ids = tok({text!r}, return_tensors="pt").input_ids
with torch.no_grad():
    print(json.dumps({{"ids": ids.tolist(), "logits": model(ids).logits[0].tolist(),
                       "chat": tok.apply_chat_template([{{"role": "user", "content": "hi"}}], tokenize=False)}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def checkpoint_logits(stage_dir: Path, ids: list) -> "torch.Tensor":
    """Logits of the weights in the stage's newest checkpoint (what training produced)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from moxin_core.checkpointing import WEIGHTS, latest_checkpoint

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(stage_dir / "model_config.json"))
    weights = load_file(latest_checkpoint(stage_dir / "checkpoints") / WEIGHTS)
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    with torch.no_grad():
        return model.eval()(torch.tensor(ids)).logits[0]
