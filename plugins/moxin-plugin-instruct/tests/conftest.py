"""Session fixtures of moxin-plugin-instruct's tests: the nano tokenizer and tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def tiny_config(vocab_size: int = 512):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=224,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=512, sliding_window=512,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def tiny_model(seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(), attn_implementation="sdpa")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from moxin_core.train import ensure_embedded_tokenizer

    return ensure_embedded_tokenizer(tmp_path_factory.mktemp("instruct-tok") / "tokenizer", 512)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from moxin_core.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, tokenizer, tokenizer_dir) -> Path:
    """A random tiny model saved as an HF folder with the chat tokenizer."""
    from moxin_core.export_hf import save_hf_folder

    return save_hf_folder(tiny_model(), tokenizer, tmp_path_factory.mktemp("instruct-hf") / "hf",
                          tokenizer_dir)
