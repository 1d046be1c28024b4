"""The ``moxin`` entry point of moxin-plugin-reasoning."""

from __future__ import annotations

from moxin_core.api import hookimpl

from moxin_plugin_reasoning.data import EmbeddedProblems, EmbeddedReasoning
from moxin_plugin_reasoning.evaluate import HeldoutMath
from moxin_plugin_reasoning.grpo import GRPO
from moxin_plugin_reasoning.recipes import VARIANTS
from moxin_plugin_reasoning.rewards import REWARDS


@hookimpl
def moxin_objectives():
    return {"grpo": GRPO}


@hookimpl
def moxin_reward_functions():
    return dict(REWARDS)


@hookimpl
def moxin_data_sources():
    return {"embedded_problems": EmbeddedProblems, "embedded_reasoning": EmbeddedReasoning}


@hookimpl
def moxin_evaluators():
    return {"heldout-math": HeldoutMath}


@hookimpl
def moxin_variants():
    return dict(VARIANTS)
