"""Shared fixtures: a small tokenizer trained once per session, CLI runner, nano-scale settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# nothing in the tests may reach a model or data hub (the hub-loading code runs on local paths)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: settings that shrink a `moxin-tiny-base` stage to a seconds-long CPU run
NANO_SETS = ["pretrain-128.model=moxin-nano", "seq_len=64", "micro_batch_size=4", "warmup_steps=2",
             "checkpoint_every=2", "log_every=1"]


# a child process starts offline and without the distributed settings in-process fits leave
# behind (accelerate, behind TRL's trainers, sets MASTER_PORT; a Lightning fit sets RANK, ...)
from moxin_core.testing import DISTRIBUTED_ENV, subprocess_env  # noqa: E402,F401


def run_cli(*args: str, env: dict | None = None, timeout: int = 900,
            cwd: Path | None = None, input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run ``moxin ARGS`` in a subprocess (the console script's code path)."""
    full_env = subprocess_env(env)
    return subprocess.run([sys.executable, "-m", "moxin_core.cli", *args], capture_output=True,
                          text=True, input=input_text, env=full_env, timeout=timeout, cwd=cwd or REPO)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one message naming ``fragments``, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "moxin: error:" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def plugin_distribution(root: Path, dist: str, package: str, code: str) -> Path:
    """Source folder of a one-module plugin distribution (entry point ``package.plugin``)."""
    import textwrap

    folder = root / dist
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text("")
    (folder / package / "plugin.py").write_text(textwrap.dedent(code))
    (folder / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"

        [project.entry-points.moxin]
        {package} = "{package}.plugin"

        [tool.setuptools]
        packages = ["{package}"]
    '''))
    return folder


def install_distributions(folders: list[Path], target: Path) -> Path:
    """pip-install plugin source folders into ``target`` (not the shared venv); returns it."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), *map(str, folders)],
                   check=True, capture_output=True, text=True)
    return target


def plugin_path_env(target: Path) -> dict:
    """Environment for a subprocess that sees the distributions installed in ``target``."""
    return {"PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}


@pytest.fixture(scope="session")
def nano_tokenizer(tmp_path_factory) -> Path:
    """The embedded-corpus tokenizer at moxin-nano's vocabulary size (512)."""
    from moxin_core.training.blocks import ensure_embedded_tokenizer

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
    """Logits of the weights in the stage's newest checkpoint (what training produced), in a model
    built from the stage's recorded family and config."""
    import torch
    from safetensors.torch import load_file

    from moxin_core.checkpointing import WEIGHTS, latest_checkpoint
    from moxin_core.export import model_from_state, stage_model
    from moxin_core.plugins import Registry

    family, config = stage_model(Registry(), stage_dir)
    weights = load_file(latest_checkpoint(stage_dir / "checkpoints") / WEIGHTS)
    model = model_from_state(family, config, weights)
    with torch.no_grad():
        return model.eval()(torch.tensor(ids)).logits[0]
