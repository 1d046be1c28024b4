"""Evaluator entries of a stage: registry names, or names with options for the evaluator."""

from __future__ import annotations

import json

import pytest

from moxin_core import hookimpl
from moxin_core.errors import MoxinError
from moxin_core.plugins import Registry, get_plugin_manager
from moxin_core.training.stage import run_evaluators
from moxin_core.variants import DataSpec, Stage, Variant, apply_overrides


class _Scored:
    """Scores what it was built with, so the test sees which options arrived."""

    def __init__(self, levels: list[int] = (1,), num: int = 10) -> None:
        self.levels, self.num = list(levels), num

    def __call__(self, path: str) -> dict[str, float]:
        return {"levels": float(sum(self.levels)), "num": float(self.num)}


def _weight_sum(path: str) -> dict[str, float]:
    """A score that moves when the weights do: the sum of the saved model's parameters."""
    from moxin_core.api import load_model

    model, _, _ = load_model(path)
    return {"weights": float(sum(p.detach().double().sum() for p in model.parameters()))}


class _Plugin:
    @hookimpl
    def moxin_evaluators(self):
        return {"scored": _Scored, "plain": lambda: lambda path: {"ok": 1.0},
                "weights": lambda: _weight_sum}

    @hookimpl
    def moxin_variants(self):
        return {"probe": lambda: Variant("probe", [
            Stage("only", "lm", [DataSpec("embedded")], model="moxin-nano", tokenizer="embedded",
                  evaluators=["plain"])])}


@pytest.fixture
def registry() -> Registry:
    pm = get_plugin_manager()  # the installed plugins (the built-in `lm`, `moxin-nano`) too
    pm.register_plugin(_Plugin(), name="evals", distribution="evals", version="0")
    return Registry(pm)


def test_options_reach_the_evaluator_and_names_still_work(registry, tmp_path):
    scores = run_evaluators(registry, ["plain", {"name": "scored", "levels": [3, 4], "num": 7}],
                            tmp_path)
    assert scores == {"plain": {"ok": 1.0}, "scored": {"levels": 7.0, "num": 7.0}}
    assert run_evaluators(registry, ["scored"], tmp_path)["scored"] == {"levels": 1.0, "num": 10.0}


def test_unknown_option_names_the_evaluator_and_what_it_accepts(registry, tmp_path):
    with pytest.raises(MoxinError, match=r"Evaluator 'scored'.*'limit'.*accepts: levels, num"):
        run_evaluators(registry, [{"name": "scored", "limit": 3}], tmp_path)


def test_bad_options_fail_when_the_variant_is_resolved_before_any_training(registry):
    from moxin_core.training.resolve import resolve_variant

    with pytest.raises(MoxinError, match=r"Evaluator 'scored'.*'limit'.*accepts: levels, num"):
        resolve_variant(registry, "probe", None,
                        ["only.evaluators=[{name: scored, limit: 3}]"], None)
    assert resolve_variant(registry, "probe", None, ["only.evaluators=[{name: scored, num: 3}]"],
                           None).stages[0].evaluators == [{"name": "scored", "num": 3}]


def test_set_accepts_entries_with_options_and_rejects_bad_ones():
    variant = Variant("v", [Stage("only", "lm", [DataSpec("embedded")], evaluators=["plain"])])
    apply_overrides(variant, {"evaluators": "[plain, {name: scored, levels: [2]}]"}, "--set")
    assert variant.stages[0].evaluators == ["plain", {"name": "scored", "levels": [2]}]
    assert variant.stages[0].summary()["evaluators"][1] == {"name": "scored", "levels": [2]}
    with pytest.raises(MoxinError, match=r"--set: evaluators: each evaluator is a name or"):
        apply_overrides(variant, {"evaluators": "[{levels: [2]}]"}, "--set")
    with pytest.raises(MoxinError, match=r"evaluator scored is listed twice"):
        apply_overrides(variant, {"evaluators": "[scored, {name: scored, num: 3}]"}, "--set")
    with pytest.raises(MoxinError, match=r"must be a list"):
        apply_overrides(variant, {"evaluators": "scored"}, "--set")


NANO = ["seq_len=32", "micro_batch_size=2", "max_steps=3", "warmup_steps=1", "checkpoint_every=2",
        "log_every=1", "lr=1e-2"]


def test_evaluate_start_scores_the_starting_model_and_leaves_training_alone(registry, tmp_path,
                                                                           nano_tokenizer):
    from moxin_core.commands.train import format_result
    from moxin_core.reporting import sha256_file
    from moxin_core.training.stage import train_variant

    sets = [*NANO, f"only.tokenizer={nano_tokenizer}", "only.evaluators=[weights]"]
    (plain,) = train_variant("probe", tmp_path / "plain", sets=sets, registry=registry)
    (scored,) = train_variant("probe", tmp_path / "scored", sets=[*sets, "evaluate_start=true"],
                              registry=registry)
    stage = tmp_path / "scored" / "only"
    assert plain.start_evals == {}
    assert not (tmp_path / "plain" / "only" / "eval_start.json").exists()
    # the starting model (moxin-nano as seeded) scored before training, the trained one after
    start = scored.start_evals["weights"]["weights"]
    assert start != scored.evals["weights"]["weights"]
    assert json.loads((stage / "eval_start.json").read_text()) == scored.start_evals
    assert json.loads((stage / "manifest.json").read_text())["eval_start"] == scored.start_evals
    assert not (stage / "start-model").exists()
    # scoring the start consumed no random numbers the run would have used
    assert sha256_file(stage / "hf" / "model.safetensors") == \
        sha256_file(tmp_path / "plain" / "only" / "hf" / "model.safetensors")
    assert scored.evals == plain.evals
    assert any(line.startswith("    weights before training: weights")
               for line in format_result(scored))
    # a finished run read back keeps its start scores
    (again,) = train_variant("probe", tmp_path / "scored", sets=[*sets, "evaluate_start=true"],
                             registry=registry, resume=True)
    assert again.skipped and again.start_evals == scored.start_evals


def test_evaluate_start_must_be_a_boolean_and_is_refused_when_sharded(registry, tmp_path):
    variant = Variant("v", [Stage("only", "lm", [DataSpec("embedded")], evaluators=["plain"])])
    apply_overrides(variant, {"only.evaluate_start": "true"}, "--set")
    assert variant.stages[0].evaluate_start is True
    assert variant.stages[0].summary()["evaluate_start"] is True
    with pytest.raises(MoxinError, match=r"--set: evaluate_start must be true or false"):
        apply_overrides(variant, {"evaluate_start": "often"}, "--set")
    from moxin_core.training.stage import train_variant

    with pytest.raises(MoxinError, match=r"evaluate_start scores the starting model on one "
                                         r"process.*fsdp"):
        train_variant("probe", tmp_path, sets=["evaluate_start=true", "strategy=fsdp"],
                      registry=registry)
