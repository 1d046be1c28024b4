"""The hook specs are the reference: documented, each one called through the plugin manager by the
core code path that consumes it, and docs/hooks.md matches them."""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import pytest
import torch

from moxin_core import docs_gen, hookspecs
from moxin_core.api import (Command, DataSource, DataSpec, ModelFamily, ModelPreset, Objective,
                            Runtime, Stage, Variant, hookimpl, hookspec)
from moxin_core.plugins import CATEGORIES, get_plugin_manager

SPECS = [name for _, name, _ in docs_gen.hook_specs()]


def test_every_category_hook_is_a_spec():
    assert set(CATEGORIES.values()) <= set(SPECS)
    assert {"moxin_callbacks", "moxin_addhooks"} <= set(SPECS)


@pytest.mark.parametrize("name", SPECS)
def test_spec_has_a_full_docstring_and_types(name):
    function = getattr(hookspecs, name)
    doc = inspect.getdoc(function) or ""
    assert len(doc.split()) >= 15, f"{name} needs a docstring that says when/what/returns"
    assert "Returns" in doc, f"{name}: document the return value"
    signature = inspect.signature(function)
    assert signature.return_annotation is not inspect.Signature.empty, name
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)
        assert parameter.name in doc, f"{name}: document argument {parameter.name}"


def test_docs_hooks_md_is_up_to_date():
    assert docs_gen.DOC_PATH.read_text() == docs_gen.render(), \
        "docs/hooks.md is stale: run `make docs` (python -m moxin_core.docs_gen)"


def test_docs_cli_md_is_the_parsers_help():
    text = docs_gen.render_cli()
    for verb in ("train", "reproduce", "new-plugin", "export", "eval", "chat"):
        assert f"## `moxin {verb}`" in text and f"usage: moxin {verb}" in text, verb
    assert "--resume" in text and "--kind {objective,data," in text
    assert docs_gen.CLI_PATH.read_text() == text, \
        "docs/cli.md is stale: run `make docs` (python -m moxin_core.docs_gen)"


# --------------------------------------------------------------------------- called, not named
# Every spec has a scenario: a probe plugin implements the hook, the core code path that
# consumes it runs, and the test checks both that the plugin manager called the hook (hook-call
# monitoring) and that what the probe returned reached the consumer.


class _ProbeSource(DataSource):
    name = "probe-source"

    def iter_from(self, position):
        for i in range(position or 0, 3):
            yield {"text": f"record {i}", "__origin__": f"probe:{i}"}, i + 1

    def fingerprint(self):
        return "probe"


class _ProbeObjective(Objective):
    def __init__(self, marker: int = 0) -> None:
        self.marker = marker

    def example_builder(self, processor, seq_len):
        raise NotImplementedError

    def collate(self, examples):
        raise NotImplementedError

    def loss(self, model, batch):
        raise NotImplementedError


class _ProbeRuntime(Runtime):
    name = "probe-runtime"

    @classmethod
    def accepts(cls, model):
        return str(model).endswith(".probe")

    def __init__(self, model):
        self.model = model

    def complete(self, prompt, max_new_tokens=64, temperature=0.0):
        return f"probe completes {prompt}"

    def chat(self, messages, max_new_tokens=256, temperature=0.0):
        return "probe replies"


class _ProbeFamily(ModelFamily):
    name = "probe-family"

    def load_config(self, source):
        return {"width": 3}

    def config_to_dict(self, config):
        return dict(config)

    def config_from_dict(self, data):
        return dict(data)

    def build(self, config):
        return torch.nn.Linear(config["width"], 1)

    def load(self, source):
        return self.build(self.load_config(source))

    def save(self, model, processor, out, processor_source=None):
        raise NotImplementedError

    def load_processor(self, source):
        return None

    def save_processor(self, processor, out, source=None):
        raise NotImplementedError


class _ProbeCommand(Command):
    help = "a probe"

    def configure(self, parser):
        parser.add_argument("--value", type=int, required=True)

    def run(self, args, registry):
        return args.value


def _export(model_path, out, force=False):
    Path(out).write_text(f"exported {model_path}")
    return Path(out)


_EXTRA_SPECS = types.ModuleType("probe_specs")


@hookspec
def moxin_probe_hook(value: int) -> int:
    """A hook a plugin defines for other plugins."""


_EXTRA_SPECS.moxin_probe_hook = moxin_probe_hook


def _registry_probe(hook_name: str, provides: dict):
    def hook(self):
        return dict(provides)

    return type("Probe", (), {hook_name: hookimpl(hook)})()


def _scenario_registry(hook_name, provides, consume, tmp_path):
    """Register a probe for a registry hook; ``consume(registry)`` runs the core path."""
    from moxin_core.plugins import Registry

    pm, calls = _monitored()
    probe = _registry_probe(hook_name, provides)
    pm.register_plugin(probe, name="probe", distribution="moxin-plugin-probe")
    consume(Registry(pm), tmp_path)
    return pm, calls, probe


def _monitored():
    pm = get_plugin_manager()
    calls: list[tuple[str, list]] = []
    pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, [i.plugin for i in impls])),
        lambda outcome, name, impls, kwargs: None)
    return pm, calls


def _consume_data_sources(registry, tmp_path):
    from moxin_core.data.datamodule import build_source

    source = build_source(registry, DataSpec("probe-source"))
    assert [r["text"] for r, _ in source.iter_from(1)] == ["record 1", "record 2"]


def _consume_objectives(registry, tmp_path):
    from moxin_core.training.blocks import build_objective

    assert build_objective(registry, "probe-objective", {"marker": 7}).marker == 7


def _consume_vision_encoders(registry, tmp_path):
    encoder = registry.get("vision_encoders", "probe-encoder")()
    assert encoder(torch.zeros(2, 3, 4, 4)).shape == (2, 3, 16)


def _consume_exporters(registry, tmp_path):
    from moxin_core.cli import main

    out = tmp_path / "exported.txt"
    assert main(["export", "somewhere", "--format", "probe-export", "--out", str(out)],
                registry) == 0
    assert out.read_text() == "exported somewhere"


def _consume_evaluators(registry, tmp_path):
    from moxin_core.training.stage import run_evaluators

    scores = run_evaluators(registry, ["probe-eval"], tmp_path, reference="start")
    assert scores == {"probe-eval": {"score": 1.0}}


def _consume_reward_functions(registry, tmp_path):
    reward = registry.get("reward_functions", "probe-reward")()
    assert reward(["q"], ["a", "bb"]) == [1.0, 2.0]


def _consume_runtimes(registry, tmp_path):
    from moxin_core.runtime import generate

    assert generate("m.probe", "hi", registry=registry) == "probe completes hi"


def _consume_model_families(registry, tmp_path):
    from moxin_core.models import resolve_model

    folder = tmp_path / "probe-model"
    folder.mkdir()
    (folder / "moxin.json").write_text('{"family": "probe-family"}')
    ref = resolve_model(registry, str(folder))
    assert ref.family.name == "probe-family" and ref.config() == {"width": 3}


def _consume_models(registry, tmp_path):
    from moxin_core.models import resolve_model

    ref = resolve_model(registry, "probe-preset")
    assert ref.is_preset and ref.family.name == "causal-lm"
    assert ref.family.describe(ref.preset.config)["parameters"] > 0


def _consume_variants(registry, tmp_path):
    from moxin_core.training.resolve import resolve_variant

    variant = resolve_variant(registry, "probe-variant", sets=["lr=0.5"])
    assert variant.stages[0].hparams.lr == 0.5


def _consume_commands(registry, tmp_path):
    from moxin_core.cli import main

    assert main(["probe-cmd", "--value", "5"], registry) == 5


class _Encoder(torch.nn.Module):
    feature_width = 16

    def forward(self, images):  # (batch, 3, 4, 4) -> (batch, 3 "patches", 16)
        return images.flatten(2)


def _nano_preset():
    from moxin_core.models.presets import moxin_nano_config

    return ModelPreset("causal-lm", moxin_nano_config())


REGISTRY_SCENARIOS = {
    "moxin_data_sources": ({"probe-source": _ProbeSource}, _consume_data_sources),
    "moxin_objectives": ({"probe-objective": _ProbeObjective}, _consume_objectives),
    "moxin_vision_encoders": ({"probe-encoder": _Encoder}, _consume_vision_encoders),
    "moxin_exporters": ({"probe-export": lambda: _export}, _consume_exporters),
    "moxin_evaluators": ({"probe-eval": lambda: lambda path, reference=None:
                          {"score": float(reference == "start")}}, _consume_evaluators),
    "moxin_reward_functions": ({"probe-reward": lambda: lambda prompts, completions:
                                [float(len(c)) for c in completions]},
                               _consume_reward_functions),
    "moxin_runtimes": ({"probe-runtime": _ProbeRuntime}, _consume_runtimes),
    "moxin_model_families": ({"probe-family": _ProbeFamily}, _consume_model_families),
    "moxin_models": ({"probe-preset": _nano_preset}, _consume_models),
    "moxin_variants": ({"probe-variant": lambda: Variant("probe-variant", [
        Stage("only", "lm", [DataSpec("embedded")], model="moxin-nano",
              tokenizer="embedded")])}, _consume_variants),
    "moxin_commands": ({"probe-cmd": _ProbeCommand}, _consume_commands),
}


def _scenario_addhooks(tmp_path):
    class Definer:
        @hookimpl
        def moxin_addhooks(self, pluginmanager):
            pluginmanager.add_hookspecs(_EXTRA_SPECS)

    class User:
        @hookimpl
        def moxin_probe_hook(self, value):
            return value * 2

    class WrongArgs:
        @hookimpl
        def moxin_probe_hook(self, value, extra):
            return 0

    pm, calls = _monitored()
    user = pm.register_plugin(User(), name="user", distribution="uses-probe", check=False)
    wrong = pm.register_plugin(WrongArgs(), name="wrong", distribution="wrong", check=False)
    definer = pm.register_plugin(Definer(), name="definer", distribution="defines-probe")
    pm.check_plugins()
    assert definer.error is None and user.error is None
    assert "extra" in wrong.error  # the plugin with the mismatch fails, not the definer
    assert pm.hook.moxin_probe_hook(value=21) == [42]
    return calls, definer.plugin


def _scenario_callbacks(tmp_path, nano_tokenizer):
    import lightning.pytorch as pl

    from moxin_core.plugins import Registry
    from moxin_core.training.stage import train_variant

    seen = {}

    class Counter(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen["batches"] = seen.get("batches", 0) + 1

    class CallbackPlugin:
        @hookimpl
        def moxin_callbacks(self, stage, out_dir):
            seen["stage"], seen["out_dir"] = stage.name, out_dir
            return [Counter()]

    pm, calls = _monitored()
    probe = CallbackPlugin()
    pm.register_plugin(probe, name="counter", distribution="test-counter")
    train_variant("moxin-tiny-base", tmp_path, stage="pretrain-128", max_steps=2,
                  registry=Registry(pm),
                  sets=["pretrain-128.model=moxin-nano", "seq_len=32", "micro_batch_size=2",
                        f"tokenizer={nano_tokenizer}", "warmup_steps=1"])
    assert seen == {"stage": "pretrain-128", "out_dir": tmp_path / "pretrain-128", "batches": 2}
    return calls, probe


@pytest.mark.parametrize("name", SPECS)
def test_spec_is_called_through_the_plugin_manager(name, tmp_path, request):
    if name in REGISTRY_SCENARIOS:
        provides, consume = REGISTRY_SCENARIOS[name]
        _, calls, probe = _scenario_registry(name, provides, consume, tmp_path)
    elif name == "moxin_addhooks":
        calls, probe = _scenario_addhooks(tmp_path)
    elif name == "moxin_callbacks":
        calls, probe = _scenario_callbacks(tmp_path, request.getfixturevalue("nano_tokenizer"))
    else:
        pytest.fail(f"hook {name} has no scenario here: add one that runs the core code path "
                    "consuming it")
    assert any(hook == name and probe in plugins for hook, plugins in calls), \
        f"the plugin manager never called {name} on the probe"
