"""Model presets: the Moxin-7B configuration and tiny variants that train on a laptop CPU.

Presets are ``transformers.MistralConfig`` objects registered through the ``moxin_models`` hook.
``build_model`` also accepts a local HF checkpoint folder or a hub id, so a stage's ``model`` field
is one string whatever it points at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, PretrainedConfig

from moxin_core.errors import MoxinError


def moxin_7b_config() -> MistralConfig:
    """Moxin-7B: Mistral architecture with 36 layers (about 8.1 B parameters)."""
    return MistralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def _scaled_config(hidden: int, layers: int, heads: int, max_positions: int,
                   vocab_size: int) -> MistralConfig:
    """A Moxin-shaped config at another scale.

    Keeps Moxin-7B's ratios: 4 query heads per KV head (32/8), SwiGLU width 3.5 x hidden
    (14336/4096), and a sliding window of 1/8 of the maximum positions (4096/32768).
    """
    if heads % 4:
        raise ValueError("heads must be a multiple of 4 to keep the 4:1 GQA ratio")
    return MistralConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 7 // 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 4,
        head_dim=hidden // heads,
        hidden_act="silu",
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=max_positions // 8,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def moxin_tiny_config() -> MistralConfig:
    """About 5 M parameters: trains on 2 CPU cores in minutes (``make demo``)."""
    return _scaled_config(hidden=256, layers=4, heads=8, max_positions=4096, vocab_size=2048)


def moxin_nano_config() -> MistralConfig:
    """About 0.1 M parameters: for unit tests."""
    return _scaled_config(hidden=64, layers=2, heads=4, max_positions=1024, vocab_size=512)


BUILTIN_PRESETS = {
    "moxin-7b": moxin_7b_config,
    "moxin-tiny": moxin_tiny_config,
    "moxin-nano": moxin_nano_config,
}


def count_parameters(config: PretrainedConfig) -> int:
    """Exact parameter count of the causal LM for ``config``, built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and Path(name).exists()


def resolve_config(model: str, registry: Any = None, **overrides: Any) -> PretrainedConfig:
    """The config of a preset name, a local HF folder or a hub id, with ``overrides`` applied."""
    if registry is not None and model in registry.names("models"):
        config = registry.get("models", model)()
    elif Path(model).expanduser().is_dir():
        config = AutoConfig.from_pretrained(Path(model).expanduser())
    elif _looks_like_path(model):
        raise MoxinError(f"Model path {model!r} does not exist. Give a preset name "
                         "(`moxin models`), an HF checkpoint folder or a hub id.")
    else:
        known = ", ".join(registry.names("models")) if registry is not None else ""
        if "/" not in model:  # hub ids are "org/name": this can only be a mistyped preset
            raise MoxinError(f"Unknown model preset {model!r}. Known presets: {known}. A model "
                             "can also be an HF checkpoint folder or a hub id such as "
                             "'moxin-org/moxin-llm-7b'.")
        try:
            config = AutoConfig.from_pretrained(model)
        except Exception as exc:
            raise MoxinError(
                f"Unknown model {model!r}: it is not a preset (known presets: {known}), not an "
                f"existing folder, and loading it as a hub id failed ({type(exc).__name__}). "
                "Check the name, or give a local HF checkpoint folder.") from None
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def build_model(model: str, registry: Any = None, dtype: torch.dtype | None = None,
                **overrides: Any) -> torch.nn.Module:
    """A causal LM: random weights for a preset, pretrained weights for a folder or hub id.

    ``overrides`` change config fields of a preset (for example ``vocab_size`` to match the
    tokenizer); pretrained checkpoints accept no overrides that would change weight shapes.
    """
    if registry is not None and model in registry.names("models"):
        config = resolve_config(model, registry, **overrides)
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    config = resolve_config(model, registry)  # validates the name with a clear error
    for key, value in overrides.items():
        if getattr(config, key, None) != value:
            raise MoxinError(f"Checkpoint {model!r} has {key}={getattr(config, key, None)}, "
                             f"but the stage asks for {key}={value}.")
    return AutoModelForCausalLM.from_pretrained(Path(model).expanduser() if Path(model).expanduser().is_dir() else model,
                                                dtype=dtype or torch.float32)
