"""Session fixtures of moxin-plugin-reasoning's tests: the nano tokenizer and a tiny model folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from reasoning_models import tiny_model


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from moxin_core.training.blocks import ensure_embedded_tokenizer

    return ensure_embedded_tokenizer(tmp_path_factory.mktemp("reasoning-tok") / "tokenizer", 512)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from moxin_core.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, tokenizer, tokenizer_dir) -> Path:
    """A random tiny model saved as an HF folder with the chat tokenizer."""
    from moxin_core.export import save_model

    return save_model(tiny_model(), tokenizer, tmp_path_factory.mktemp("reasoning-hf") / "hf",
                      tokenizer_dir)
