"""Variants without code: a YAML variant file runs like a registered variant, and a stage's
objective can be swapped from --set."""

from __future__ import annotations

import json

import pytest
import yaml

from moxin_core.errors import MoxinError
from moxin_core.plugins import Registry
from moxin_core.reporting import sha256_file
from moxin_core.training.resolve import resolve_variant
from moxin_core.training.stage import train_variant
from moxin_core.variants import DataSpec, Stage, Variant, apply_overrides, load_variant_file

NANO = ["pretrain-128.model=moxin-nano", "seq_len=64", "micro_batch_size=4", "warmup_steps=1",
        "checkpoint_every=2", "log_every=1", "max_steps=4"]


def _as_file(variant: Variant, path, stages: int = 1):
    """What `moxin variants --json` shows of the variant, written as a YAML variant file."""
    data = {"name": "from-yaml", "description": variant.description,
            "tokenizer": variant.tokenizer,
            "stages": [s.summary() for s in variant.stages[:stages]]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_yaml_variant_trains_to_the_registered_variants_weights(tmp_path, nano_tokenizer):
    registry = Registry()
    variant = registry.get("variants", "moxin-tiny-base")()
    file = _as_file(variant, tmp_path / "mine.yaml")
    sets = [*NANO, f"tokenizer={nano_tokenizer}"]
    (registered,) = train_variant("moxin-tiny-base", tmp_path / "a", stage="pretrain-128",
                                  sets=sets, registry=registry)
    (written,) = train_variant(str(file), tmp_path / "b", sets=sets, registry=registry)
    assert registered.steps == written.steps == 4
    assert sha256_file(tmp_path / "a" / "pretrain-128" / "hf" / "model.safetensors") == \
        sha256_file(tmp_path / "b" / "pretrain-128" / "hf" / "model.safetensors")
    manifest = json.loads((tmp_path / "b" / "pretrain-128" / "manifest.json").read_text())
    assert manifest["variant"] == "from-yaml"
    # read back, the file is the registered stage
    loaded = load_variant_file(str(file)).stages[0]
    assert loaded.summary() == variant.stages[0].summary()


def test_variant_file_errors_name_the_file_stage_and_key(tmp_path):
    def bad(text: str, *fragments: str) -> None:
        path = tmp_path / "v.yaml"
        path.write_text(text)
        with pytest.raises(MoxinError) as error:
            load_variant_file(str(path))
        for fragment in fragments:
            assert fragment in str(error.value), (fragment, str(error.value))

    bad("stages: []", "v.yaml", "`stages` must be a non-empty list")
    bad("stage: []", "unknown key 'stage'", "known: name, description, tokenizer, stages")
    bad("stages: [{name: a, objective: lm, data: [{source: embedded}], lr_max: 3}]",
        "stage 1 ('a'): unknown key 'lr_max'")
    bad("stages: [{name: a, data: [{source: embedded}]}]", "needs at least `name` and `objective`")
    bad("stages: [{name: a, objective: lm}]", "`data` (or `data_sources`) is missing")
    bad("stages: [{name: a, objective: lm, data: [{source: embedded}], "
        "hyper_parameters: {max_steps: many}}]", "max_steps", "expects a number")
    bad("stages: [{name: a, objective: lm, data: [{source: embedded}], "
        "hyper_parameters: {micro_batch_size: 4, global_batch: 16}}]",
        "global_batch 16 does not match", "= 4")
    bad("stages: [{name: a, objective: lm, data: [{source: embedded}]}, "
        "{name: a, objective: lm, data: [{source: embedded}]}]", "a second stage named 'a'")
    with pytest.raises(MoxinError, match=r"Variant file .*absent.yaml' does not exist"):
        resolve_variant(Registry(), str(tmp_path / "absent.yaml"))


def test_set_swaps_a_stages_objective_and_its_options():
    variant = Variant("v", [Stage("dpo", "dpo", [DataSpec("embedded")],
                                  objective_options={"beta": 0.1})])
    # the options given with the new objective are its own, whatever their order
    apply_overrides(variant, {"dpo.objective_options.alpha": "0.5", "dpo.objective": "lm"},
                    "--set")
    stage = variant.stages[0]
    assert stage.objective == "lm" and stage.objective_options == {"alpha": 0.5}
    apply_overrides(variant, {"objective": "lm"}, "--set")  # every stage; unchanged: kept
    assert stage.objective_options == {"alpha": 0.5}
    with pytest.raises(MoxinError, match=r"objective must be an objective name"):
        apply_overrides(variant, {"objective": ""}, "--set")


def test_an_unknown_swapped_objective_fails_before_training(nano_tokenizer):
    with pytest.raises(MoxinError, match=r"Unknown objective 'orpo'"):
        resolve_variant(Registry(), "moxin-tiny-base", sets=["pretrain-128.objective=orpo"])
    swapped = resolve_variant(Registry(), "moxin-tiny-base", sets=["objective=lm"])
    assert {s.objective for s in swapped.stages} == {"lm"}
