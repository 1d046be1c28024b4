"""Model presets and the causal-lm family: the exact Moxin-7B config, counted on the meta device;
tiny presets' ratios; folders reload through their family."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from moxin_core.errors import MoxinError
from moxin_core.models import resolve_model
from moxin_core.models.causal_lm import CausalLMFamily
from moxin_core.models.presets import BUILTIN_PRESETS
from tests.conftest import assert_clean_error, run_cli

MOXIN_7B = {
    "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5, "sliding_window": 4096, "max_position_embeddings": 32768,
    "vocab_size": 32000, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2,
}


def mistral_parameters(c: dict) -> int:
    """Independent count from the architecture: embeddings, attention (GQA), SwiGLU, norms."""
    hidden, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    head_dim = c.get("head_dim") or hidden // c["num_attention_heads"]
    q = hidden * c["num_attention_heads"] * head_dim
    kv = 2 * hidden * c["num_key_value_heads"] * head_dim
    o = c["num_attention_heads"] * head_dim * hidden
    mlp = 3 * hidden * inter
    per_layer = q + kv + o + mlp + 2 * hidden
    embeddings = c["vocab_size"] * hidden * (1 if c["tie_word_embeddings"] else 2)
    return embeddings + layers * per_layer + hidden


def test_models_json_reports_moxin_7b_exactly():
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    entry = next(e for e in json.loads(result.stdout) if e["name"] == "moxin-7b")
    config = entry["config"]
    for key, value in MOXIN_7B.items():
        assert config[key] == value, key
    assert config.get("rope_parameters", {}).get("rope_theta", config.get("rope_theta")) == 10000.0
    assert entry["parameters"] == mistral_parameters(config)
    assert 8.0e9 < entry["parameters"] < 8.2e9


def test_counting_7b_does_not_allocate_weights():
    code = ("import resource; from moxin_core.models.presets import moxin_7b_config; "
            "from moxin_core.models.causal_lm import CausalLMFamily; "
            "n = CausalLMFamily().describe(moxin_7b_config())['parameters']; "
            "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, max_rss_kib = map(int, out.stdout.split())
    assert count > 8e9
    assert max_rss_kib < 3 * 1024 * 1024, "fp32 weights would need 32 GB; meta needs none"


@pytest.mark.parametrize("name", ["moxin-tiny", "moxin-nano"])
def test_tiny_presets_keep_moxin_ratios(name):
    config = BUILTIN_PRESETS[name]().config
    big = BUILTIN_PRESETS["moxin-7b"]().config
    assert config.num_attention_heads / config.num_key_value_heads == \
        big.num_attention_heads / big.num_key_value_heads
    assert config.intermediate_size / config.hidden_size == big.intermediate_size / big.hidden_size
    assert config.max_position_embeddings / config.sliding_window == \
        big.max_position_embeddings / big.sliding_window
    assert config.tie_word_embeddings is False
    assert config.bos_token_id == 1 and config.eos_token_id == 2


def test_tiny_is_a_few_million_and_nano_is_smaller():
    family = CausalLMFamily()
    tiny = family.describe(BUILTIN_PRESETS["moxin-tiny"]().config)["parameters"]
    nano = family.describe(BUILTIN_PRESETS["moxin-nano"]().config)["parameters"]
    assert 2e6 < tiny < 10e6
    assert nano < tiny / 10


def test_saved_folder_reloads_through_its_family(tmp_path, registry, nano_tokenizer):
    from moxin_core.export import save_model
    from moxin_core.tokenizer import load_tokenizer

    ref = resolve_model(registry, "moxin-nano")
    assert ref.is_preset and ref.family.name == "causal-lm"
    torch.manual_seed(0)
    model = ref.family.build(ref.preset.config)
    save_model(model, load_tokenizer(nano_tokenizer), tmp_path / "ckpt", nano_tokenizer)
    assert json.loads((tmp_path / "ckpt" / "moxin.json").read_text()) == {"family": "causal-lm"}
    again = resolve_model(registry, str(tmp_path / "ckpt"))
    assert again.family.name == "causal-lm" and again.source == str(tmp_path / "ckpt")
    loaded = again.family.load(again.source)
    assert loaded.training  # ready to train, as a preset's model is
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name

    # a finished stage folder (OUT/STAGE, its model in hf/) is a model too, as for `moxin chat`;
    # its tokenizer comes from there when the stage names none
    from moxin_core.training.resolve import stage_processor
    from moxin_core.variants import DataSpec, Stage, Variant

    (tmp_path / "stage").mkdir()
    (tmp_path / "ckpt").rename(tmp_path / "stage" / "hf")
    staged = resolve_model(registry, str(tmp_path / "stage"))
    assert staged.source == str(tmp_path / "stage" / "hf") and not staged.is_preset
    stage = Stage("next", "lm", [DataSpec("embedded")], model=str(tmp_path / "stage"))
    assert stage_processor(registry, Variant("v", [stage]), stage, stage.model,
                           tmp_path) == str(tmp_path / "stage" / "hf")


def test_unknown_preset_is_a_clear_error(registry, tmp_path):
    with pytest.raises(MoxinError, match="Unknown model preset 'moxin-3b'.*moxin-7b"):
        resolve_model(registry, "moxin-3b")
    with pytest.raises(MoxinError, match="does not exist"):
        resolve_model(registry, str(tmp_path / "missing"))
    with pytest.raises(MoxinError, match="Could not read a model config from 'org/no-such-model'"):
        resolve_model(registry, "org/no-such-model").config()


def test_cli_unknown_preset_and_variant(tmp_path):
    assert_clean_error(run_cli("train", "moxin-tiny-base", "--out", str(tmp_path / "r"),
                               "--set", "model=moxin-3b"), "moxin-3b", "Known presets")
    assert_clean_error(run_cli("train", "moxin-huge", "--out", str(tmp_path / "r")),
                       "Unknown variant 'moxin-huge'", "moxin-tiny-base")
    assert_clean_error(run_cli("export", str(tmp_path), "--format", "onnx", "--out",
                               str(tmp_path / "e")), "Unknown exporter 'onnx'", "hf")
