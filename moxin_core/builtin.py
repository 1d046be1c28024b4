"""The core's built-in plugin, registered through the ``moxin`` entry-point group like any other."""

from __future__ import annotations

from moxin_core.commands.demo import DemoCommand
from moxin_core.commands.export import ExportCommand
from moxin_core.commands.generate import ChatCommand, GenerateCommand
from moxin_core.commands.listing import ModelsCommand, PluginsCommand, VariantsCommand
from moxin_core.commands.new_plugin import NewPluginCommand
from moxin_core.commands.plan import PlanCommand
from moxin_core.commands.reproduce import ReproduceCommand
from moxin_core.commands.tokenizer import TokenizerCommand
from moxin_core.commands.train import TrainCommand
from moxin_core.data.sources import BUILTIN_SOURCES
from moxin_core.hookspecs import hookimpl
from moxin_core.models.causal_lm import CausalLMFamily
from moxin_core.models.presets import BUILTIN_PRESETS
from moxin_core.objectives.lm import CausalLM
from moxin_core.recipes import BUILTIN_VARIANTS


def _hf_exporter():
    from moxin_core.export import export_hf

    return export_hf


@hookimpl
def moxin_data_sources():
    return dict(BUILTIN_SOURCES)


@hookimpl
def moxin_objectives():
    return {"lm": CausalLM}


@hookimpl
def moxin_exporters():
    return {"hf": _hf_exporter}


@hookimpl
def moxin_runtimes():
    from moxin_core.runtime import TransformersRuntime

    return {"transformers": TransformersRuntime}


@hookimpl
def moxin_model_families():
    return {CausalLMFamily.name: CausalLMFamily}


@hookimpl
def moxin_models():
    return dict(BUILTIN_PRESETS)


@hookimpl
def moxin_variants():
    return dict(BUILTIN_VARIANTS)


@hookimpl
def moxin_commands():
    return {"plugins": PluginsCommand, "models": ModelsCommand, "variants": VariantsCommand,
            "tokenizer": TokenizerCommand, "train": TrainCommand, "export": ExportCommand,
            "generate": GenerateCommand, "chat": ChatCommand, "demo": DemoCommand,
            "reproduce": ReproduceCommand, "new-plugin": NewPluginCommand, "plan": PlanCommand}
