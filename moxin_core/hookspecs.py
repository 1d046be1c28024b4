"""Every moxin hook specification, grouped by phase.

This module *is* the reference for plugin authors: ``docs/hooks.md`` is generated from these
docstrings (``python -m moxin_core.docs_gen``) and a test fails when it is stale.

A plugin is any module or object with functions named like the specs below and marked with
``@moxin_core.hookimpl``. Implementations may accept a subset of a spec's arguments, so adding an
argument to a spec never breaks an existing plugin.

**Registry hooks** (data, objectives, vision, export, evaluation, models, variants) take no
arguments and return ``{name: factory}``. The core calls every implementation, merges the
dictionaries per category and looks factories up by name. A name registered by two plugins is an
error naming both distributions; plugin load order never matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "moxin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Factory = Callable[..., Any]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@hookspec
def moxin_data_sources() -> dict[str, Factory]:
    """Register data sources.

    Called once per category lookup (``moxin train``, ``moxin plugins``, ...).

    Returns:
        ``{name: factory}``. ``factory(**options)`` builds a data source from the options a stage
        gives it (for example ``paths=["data/*.jsonl"], text_field="text"``) and must raise
        :class:`moxin_core.MoxinError` naming the bad option when they are wrong. The source
        implements :class:`moxin_core.data.sources.DataSource`: ``iter_from(position)`` yields
        ``(record, position_after_record)`` pairs, deterministically, starting at ``position``
        (``None`` = the start; positions are small picklable values, saved in checkpoints for
        exact resume); ``fingerprint()`` returns a short hash of what it reads.
    """


# --------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------


@hookspec
def moxin_objectives() -> dict[str, Factory]:
    """Register training objectives (``lm``, ``sft``, ``dpo``, ``grpo``, ...).

    Returns:
        ``{name: factory}``. ``factory(**options)`` returns an objective: an object that turns
        records into batches (``collate``) and computes ``loss(model, batch) -> (loss, metrics)``
        where ``loss`` is a scalar tensor and ``metrics`` a ``{name: float tensor}`` dict logged by
        the core. See :class:`moxin_core.objectives.base.Objective`.
    """


# --------------------------------------------------------------------------------------------
# Vision
# --------------------------------------------------------------------------------------------


@hookspec
def moxin_vision_encoders() -> dict[str, Factory]:
    """Register vision encoders for vision-language models.

    Returns:
        ``{name: factory}``. ``factory(**options)`` returns a module mapping an image batch
        ``(batch, 3, H, W)`` to patch features ``(batch, patches, width)``, with attributes
        ``transform`` (PIL image to tensor) and ``feature_width`` (int).
    """


# --------------------------------------------------------------------------------------------
# Export and evaluation
# --------------------------------------------------------------------------------------------


@hookspec
def moxin_exporters() -> dict[str, Factory]:
    """Register exporters (``hf``, ``gguf``, ...).

    Returns:
        ``{name: factory}``. ``factory()`` returns a callable
        ``export(model_path, out, **options) -> pathlib.Path`` that writes the trained model found
        at ``model_path`` (a stage folder or an HF folder) to ``out`` and returns what it wrote.
    """


@hookspec
def moxin_evaluators() -> dict[str, Factory]:
    """Register evaluators (benchmark suites, held-out accuracy, ...).

    Returns:
        ``{name: factory}``. ``factory(**options)`` returns a callable
        ``evaluate(model_path) -> dict[str, float]`` returning named scores. A stage lists
        evaluators by name (``Stage.evaluators``); ``moxin train`` runs them on the stage's HF
        export, prints the scores and stores them in ``eval.json`` and the manifest. If
        ``evaluate`` has a ``reference`` parameter it also receives the model the stage started
        from (for scores relative to it, such as preference reward accuracy).
    """


@hookspec
def moxin_reward_functions() -> dict[str, Factory]:
    """Register reward functions for reinforcement learning objectives.

    Returns:
        ``{name: factory}``. ``factory(**options)`` returns a callable
        ``reward(prompts, completions, **record_fields) -> list[float]``, one reward per
        completion.
    """


@hookspec
def moxin_runtimes() -> dict[str, Factory]:
    """Register inference runtimes for ``moxin generate`` and ``moxin chat``.

    The core ships ``transformers`` (HF folders, stage folders, hub ids); plugins add others, such
    as ``llama.cpp`` for ``.gguf`` files.

    Returns:
        ``{name: factory}``. ``factory`` is a :class:`moxin_core.runtime.Runtime` subclass:
        ``factory.accepts(model)`` says whether it can load the path or id ``model`` (the first
        plugin runtime that accepts wins over ``transformers``), ``factory(model)`` loads it, and
        the instance's ``complete(prompt, max_new_tokens, temperature)`` and
        ``chat(messages, max_new_tokens, temperature)`` return the generated text (chat applies
        the model's chat template to ``[{"role", "content"}, ...]``).
    """


# --------------------------------------------------------------------------------------------
# Models and variants
# --------------------------------------------------------------------------------------------


@hookspec
def moxin_models() -> dict[str, Factory]:
    """Register model presets.

    Returns:
        ``{name: factory}``. ``factory()`` returns a ``transformers.PretrainedConfig`` (for the
        Moxin family a ``MistralConfig``) from which the model is built with random weights.
    """


@hookspec
def moxin_variants() -> dict[str, Factory]:
    """Register variants: named, ordered recipes of stages.

    Returns:
        ``{name: factory}``. ``factory()`` returns a :class:`moxin_core.variants.Variant`. Variants
        are data: each stage names its objective, data sources (with weights), model and
        hyper-parameters by registry name.
    """


# --------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------


@hookspec
def moxin_callbacks(stage: Any, out_dir: Any) -> list[Any]:
    """Add Lightning callbacks to a training run.

    Called once per stage by ``moxin train`` (never for a plain ``Trainer.fit`` script, where the
    user owns the callbacks), after the stage configuration is resolved and before the
    ``lightning.Trainer`` is built.

    Args:
        stage: the resolved :class:`moxin_core.variants.Stage` about to run.
        out_dir: ``pathlib.Path`` of the stage's output folder.

    Returns:
        A list of ``lightning.pytorch.Callback`` instances (may be empty). Results of all plugins
        are concatenated.
    """
