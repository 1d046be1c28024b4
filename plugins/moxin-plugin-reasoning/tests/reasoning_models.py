"""Tiny random Mistral models for moxin-plugin-reasoning's tests (a module with its own name:
every plugin's test folder has a ``conftest.py``)."""

from __future__ import annotations

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
