"""The ``moxin`` entry point of moxin-plugin-instruct."""

from __future__ import annotations

from moxin_core.api import hookimpl

from moxin_plugin_instruct.data import EmbeddedInstructions, EmbeddedPreferences
from moxin_plugin_instruct.dpo import DPO
from moxin_plugin_instruct.evaluate import HeldoutArithmetic, HeldoutPreferences
from moxin_plugin_instruct.recipes import VARIANTS
from moxin_plugin_instruct.sft import SFT


@hookimpl
def moxin_objectives():
    return {"sft": SFT, "dpo": DPO}


@hookimpl
def moxin_data_sources():
    return {"embedded_instructions": EmbeddedInstructions,
            "embedded_preferences": EmbeddedPreferences}


@hookimpl
def moxin_evaluators():
    return {"heldout-arithmetic": HeldoutArithmetic, "heldout-preferences": HeldoutPreferences}


@hookimpl
def moxin_variants():
    return dict(VARIANTS)
