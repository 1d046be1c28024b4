"""Tiny random language models and VLMs for moxin-plugin-vlm's tests (a module with its own name:
every plugin's test folder has a ``conftest.py``)."""

from __future__ import annotations

import torch


def tiny_lm(vocab_size: int = 512, seed: int = 0):
    from transformers import AutoModelForCausalLM, MistralConfig

    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=224,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, max_position_embeddings=512, sliding_window=512,
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def tiny_vlm(llm_folder, seed: int = 0, projector: str = "gelu-mlp"):
    """A VLM built the way `moxin train` builds the tiny preset, on ``llm_folder``."""
    from moxin_plugin_vlm.family import VLMFamily

    family = VLMFamily()
    config = {"encoder": {"name": "tiny-vit", "options": {}}, "projector": projector,
              "llm": str(llm_folder), "pad_token": "<PAD>", "pad_to_multiple_of": 64}
    config = family.bind_references(config, {"llm": str(llm_folder)})
    processor = family.fit_processor(family.load_processor(llm_folder), config)
    config = family.fit_config(config, processor)
    torch.manual_seed(seed)
    return family.build(config), processor, family
