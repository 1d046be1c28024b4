"""Session fixtures of moxin-plugin-vlm's tests: the nano chat tokenizer and a tiny LM folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlm_models import tiny_lm


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from moxin_core.training.blocks import ensure_embedded_tokenizer

    return ensure_embedded_tokenizer(tmp_path_factory.mktemp("vlm-tok") / "tokenizer", 512)


@pytest.fixture(scope="session")
def lm_folder(tmp_path_factory, tokenizer_dir) -> Path:
    """A random tiny Mistral saved as an HF folder with the chat tokenizer."""
    from moxin_core.export import save_model
    from moxin_core.tokenizer import load_tokenizer

    return save_model(tiny_lm(), load_tokenizer(tokenizer_dir),
                      tmp_path_factory.mktemp("vlm-lm") / "hf", tokenizer_dir)
