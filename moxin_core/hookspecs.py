"""Every moxin hook specification, grouped by phase.

This module *is* the reference for plugin authors: ``docs/hooks.md`` is generated from these
docstrings (``python -m moxin_core.docs_gen``) and a test fails when it is stale.

A plugin is any module or object with functions named like the specs below and marked with
``@moxin_core.hookimpl``. Implementations may accept a subset of a spec's arguments, so adding an
argument to a spec never breaks an existing plugin.

**Registry hooks** (data, objectives, vision, export, evaluation, models, variants, commands)
take no arguments and return ``{name: factory}``. The core calls each plugin's implementation
once when the plugin is loaded, merges the dictionaries per category and looks factories up by
name. A name registered by two plugins is an error naming both distributions; plugin load order
never matters.

**Isolation.** A plugin that fails to import, implements a hook no spec defines (a misspelled
name), takes an argument its spec does not have, or whose registry hook raises or returns
something other than a dict, is not loaded: ``moxin plugins`` lists it with the error, every other
plugin and command works, and a run that needs a name it would have provided fails with that
error. ``MOXIN_STRICT_PLUGINS=1`` raises instead.

Plugin authors import from :mod:`moxin_core.api` only.
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
        ``{name: factory}``. ``factory(**options)`` returns a :class:`moxin_core.api.Objective`
        built from a stage's ``objective_options``: ``example_builder(processor, seq_len)`` turns
        records into examples, ``collate`` examples into a batch, and
        ``loss(model, batch) -> (loss, metrics)`` gives a scalar tensor and ``{name: tensor}``
        metrics the core logs. ``setup(context)`` receives a
        :class:`moxin_core.api.ObjectiveContext` (processor, registry, stage folder,
        hyper-parameters, trainer, training batches, frozen helper models, collectives);
        ``prepare_model(model)`` runs once the trained model exists (sharded under FSDP),
        before the optimiser: it chooses what trains (``requires_grad``);
        ``on_fit_start()`` runs when the model is on its device; ``state_dict()`` is saved in
        every checkpoint and given back to ``load_state_dict`` on resume.
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
        ``transform`` (PIL image to tensor), ``feature_width`` (int: ``width``) and
        ``num_patches`` (int: ``patches``, the image tokens a VLM inserts per picture).
        :func:`moxin_core.testing.check_vision_encoder` checks these.
    """


# --------------------------------------------------------------------------------------------
# Export and evaluation
# --------------------------------------------------------------------------------------------


@hookspec
def moxin_exporters() -> dict[str, Factory]:
    """Register exporters (``hf``, ``gguf``, ...).

    Returns:
        ``{name: factory}``. ``factory()`` returns a callable
        ``export(model_path, out, force=False, **options) -> pathlib.Path`` that writes the
        trained model found at ``model_path`` (a stage folder or a model folder; load it with
        :func:`moxin_core.api.load_model`, which goes through the model's family) to ``out`` and
        returns what it wrote. Unknown options must raise :class:`moxin_core.MoxinError`. An
        ``export`` with a ``registry`` parameter receives the command's registry (for
        ``load_model``).
    """


@hookspec
def moxin_evaluators() -> dict[str, Factory]:
    """Register evaluators (benchmark suites, held-out accuracy, ...).

    Returns:
        ``{name: factory}``. ``factory(**options)`` returns a callable
        ``evaluate(model_path) -> dict[str, float]`` returning named scores (load the model with
        :func:`moxin_core.api.load_model`, which goes through its family). A stage lists
        evaluators by name (``Stage.evaluators``), or as ``{"name": NAME, OPTION: VALUE}`` whose
        options go to the factory (an option it does not take is an error listing those it
        does). ``factory(**options)`` is also called once when the variant is resolved, so that
        it can reject bad options before training: keep it cheap and do the work in
        ``evaluate``. ``moxin train`` runs them once (on rank 0,
        the other ranks waiting) on the stage's exported model folder, prints the scores and
        stores them in ``eval.json`` and the manifest. If ``evaluate`` has a ``reference``
        parameter it also receives the model the stage started from (for scores relative to it,
        such as preference reward accuracy).
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
def moxin_model_families() -> dict[str, Factory]:
    """Register model families: how one kind of model is built, loaded, saved and sharded.

    The core registers ``causal-lm`` (transformers causal LMs and their tokenizers); a
    vision-language plugin registers its own. Every step that touches a model (building it for
    a stage, ``previous``/``variant:NAME``, ``moxin export``, runtimes, evaluators) goes through
    the family the model belongs to: a preset names it, a moxin-written folder records it in
    ``moxin.json``, and other folders and hub ids belong to the first family whose
    ``recognizes`` accepts them, else ``causal-lm``.

    Returns:
        ``{name: factory}``. ``factory()`` returns a :class:`moxin_core.api.ModelFamily`.
    """


@hookspec
def moxin_models() -> dict[str, Factory]:
    """Register model presets.

    Returns:
        ``{name: factory}``. ``factory()`` returns a :class:`moxin_core.api.ModelPreset`: the
        name of a registered model family and a config that family builds a model from with
        random weights (for ``causal-lm`` a ``transformers.PretrainedConfig``; the Moxin presets
        are ``MistralConfig``).
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
# Command line
# --------------------------------------------------------------------------------------------


@hookspec
def moxin_commands() -> dict[str, Factory]:
    """Register ``moxin`` sub-commands (``moxin eval`` and the core's own verbs come this way).

    Returns:
        ``{name: factory}``. ``factory()`` returns a :class:`moxin_core.api.Command`: ``help``
        (one line for ``moxin --help``), ``configure(parser)`` adds the command's arguments to
        its ``argparse`` sub-parser, and ``run(args, registry) -> int`` runs it (the exit status;
        raise :class:`moxin_core.MoxinError` for user errors, which the CLI prints as one
        paragraph). A command whose ``configure`` raises is left out with a warning; the others
        work.
    """


# --------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------


@hookspec(historic=True)
def moxin_addhooks(pluginmanager: Any) -> None:
    """Add hook specifications of a plugin's own (as pytest's ``pytest_addhooks``).

    Called once for every plugin when it is registered, before its other hooks are checked, so
    a plugin can define hooks that other plugins implement: call
    ``pluginmanager.add_hookspecs(module)`` with a module of ``@moxin_core.api.hookspec``
    functions. A plugin implementing such a hook is checked against the spec when the spec is
    added; a mismatch is that plugin's load error.

    Args:
        pluginmanager: the :class:`moxin_core.plugins.MoxinPluginManager` loading the plugins.

    Returns:
        Nothing.
    """


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
