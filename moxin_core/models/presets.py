"""Model presets of the ``causal-lm`` family: Moxin-7B and tiny variants that train on a CPU.

Each preset is a :class:`~moxin_core.models.family.ModelPreset` holding a
``transformers.MistralConfig``, registered through the ``moxin_models`` hook.
"""

from __future__ import annotations

from transformers import MistralConfig

from moxin_core.models.family import DEFAULT_FAMILY, ModelPreset


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


def _preset(config_fn, description: str):
    return lambda: ModelPreset(DEFAULT_FAMILY, config_fn(), description)


BUILTIN_PRESETS = {
    "moxin-7b": _preset(moxin_7b_config, "Moxin-7B: Mistral architecture, 36 layers"),
    "moxin-tiny": _preset(moxin_tiny_config, "Moxin-shaped, ~5 M parameters (CPU demo)"),
    "moxin-nano": _preset(moxin_nano_config, "Moxin-shaped, ~0.1 M parameters (unit tests)"),
}
