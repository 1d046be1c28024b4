"""The core's built-in plugin, registered through the ``moxin`` entry-point group like any other."""

from __future__ import annotations

from moxin_core.data.sources import BUILTIN_SOURCES
from moxin_core.hookspecs import hookimpl
from moxin_core.objectives.lm import CausalLM
from moxin_core.presets import BUILTIN_PRESETS
from moxin_core.recipes import BUILTIN_VARIANTS


def _hf_exporter():
    from moxin_core.export_hf import export_hf

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
def moxin_models():
    return dict(BUILTIN_PRESETS)


@hookimpl
def moxin_variants():
    return dict(BUILTIN_VARIANTS)
