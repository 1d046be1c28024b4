"""Variant resolution: overrides applied and validated, and where each stage starts from."""

from __future__ import annotations

import contextlib
import copy
import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from moxin_core.errors import MoxinError
from moxin_core.models.family import resolve_model
from moxin_core.training.blocks import EMBEDDED_TOKENIZER, ensure_embedded_tokenizer
from moxin_core.variants import (PREVIOUS, VARIANT_PREFIX, Stage, Variant, apply_overrides,
                                 evaluator_specs, is_variant_file, load_config_file,
                                 load_variant_file)


def resolve_variant(registry: Any, name: str, config: str | None = None,
                    sets: Sequence[str] = (), max_steps: int | None = None) -> Variant:
    """The variant (a registered name, or a ``.yaml`` variant file) with config-file and
    ``--set`` overrides applied and validated."""
    if is_variant_file(name):
        variant = load_variant_file(name)
    else:
        variant = copy.deepcopy(registry.get("variants", name)())
    if config:
        apply_overrides(variant, load_config_file(config), f"config file {config!r}")
    overrides = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MoxinError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=3e-4.")
        overrides[key.strip()] = value
    apply_overrides(variant, overrides, "--set")
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
            raise MoxinError(f"--max-steps: max_steps must be a positive integer, got "
                             f"{max_steps!r}; leave --max-steps out to train each stage for its "
                             "own max_steps.")
        apply_overrides(variant, {"max_steps": max_steps}, "--max-steps")
    source = f"variant file {name}" if is_variant_file(name) else f"variant {variant.name!r}"
    for stage in variant.stages:
        where = f"stage {stage.name!r} of {source}"
        stage.hparams.validate(where)
        _check_lightning_names(stage, where)
        with _context(where):
            registry.get("objectives", stage.objective)
            if stage.model.startswith(VARIANT_PREFIX):
                registry.get("variants", stage.model[len(VARIANT_PREFIX):])
            elif stage.model != PREVIOUS:
                resolve_model(registry, stage.model).config()  # unknown preset/path: clear now
            for spec in stage.data:
                registry.get("data_sources", spec.source)
        for evaluator, options in evaluator_specs(stage.evaluators, where):
            # bad options fail before training: built once here (evaluators are cheap to build;
            # their work happens when called), so their own checks run too
            evaluator_factory(registry, evaluator, options)(**options)
    return variant


@contextlib.contextmanager
def _context(where: str) -> Iterator[None]:
    """Prefix a MoxinError raised inside with ``where`` (which stage, of which file)."""
    try:
        yield
    except MoxinError as error:
        raise type(error)(f"{where}: {error}") from None


def _check_lightning_names(stage: Stage, where: str) -> None:
    """``accelerator`` and ``strategy`` must be names Lightning (or moxin) knows; checked here,
    not when the Trainer is built after the model."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from moxin_core.strategies import SHARDED

    hp = stage.hparams
    accelerators = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    strategies = sorted({"auto", *SHARDED, *StrategyRegistry.available_strategies()})
    for name, value, known in (("accelerator", hp.accelerator, accelerators),
                               ("strategy", hp.strategy, strategies)):
        if value not in known:
            close = difflib.get_close_matches(str(value), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            # Lightning registers each strategy again per option ("ddp_find_unused_...")
            shown = [k for k in known if "_find_unused_parameters" not in k]
            raise MoxinError(f"Invalid hyper-parameters in {where}: {name} {value!r} is "
                             f"unknown{hint}; known: {', '.join(shown)}.")


def _variant_result(registry: Any, reference: str, out: Path, stage: Stage) -> Path:
    """``variant:NAME`` -> the final stage's model folder of that variant under ``out``."""
    name = reference[len(VARIANT_PREFIX):]
    try:
        factory = registry.get("variants", name)
    except MoxinError as error:
        raise MoxinError(f"Stage {stage.name!r} starts from the final model of variant {name!r} "
                         f"({reference}), which no installed plugin provides: {error} Install "
                         f"the plugin that has it, or point {stage.name}.model (or, for a model "
                         f"built from others, {stage.name}.references.ROLE) at a model folder or "
                         "hub id.") from None
    final = factory().stages[-1].name
    folder = out / final / "hf"
    if not folder.is_dir():
        raise MoxinError(f"Stage {stage.name!r} starts from the final model of variant {name!r}, "
                         f"expected at {folder}, which does not exist yet. Run `moxin train "
                         f"{name} --out {out}` first, or set {stage.name}.model to a checkpoint "
                         "folder or hub id.")
    return folder


def evaluator_factory(registry: Any, name: str, options: dict[str, Any]) -> Any:
    """The factory of evaluator ``name``, once ``options`` are known to fit its parameters."""
    factory = registry.get("evaluators", name)
    check_evaluator_options(name, factory, options)
    return factory


def check_evaluator_options(name: str, factory: Any, options: dict[str, Any]) -> None:
    """MoxinError, naming the parameters it accepts, when ``options`` do not fit the signature
    of evaluator ``name``'s ``factory`` (a factory taking ``**options`` checks them itself)."""
    import inspect

    try:
        inspect.signature(factory).bind(**options)
    except TypeError as error:
        accepted = ", ".join(inspect.signature(factory).parameters)
        raise MoxinError(f"Evaluator {name!r}: {error} (options {sorted(options)}); it accepts: "
                         f"{accepted or 'no options'}.") from None


def stage_start(registry: Any, variant: Variant, stage: Stage, out: Path) -> str:
    """The model a stage starts from: a preset name, a folder or a hub id (``previous`` and
    ``variant:NAME`` resolved to folders under ``out``)."""
    return _model_source(registry, variant, stage, stage.model, out)


def preset_references(registry: Any, variant: Variant, stage: Stage, init: str,
                      out: Path) -> dict[str, str]:
    """The models a composite preset is built from (``ModelFamily.references``), resolved like
    a stage's ``model``; ``{}`` when ``init`` is no preset or has none."""
    ref = resolve_model(registry, init)
    if not ref.is_preset:
        if stage.references:
            raise MoxinError(f"Stage {stage.name!r} sets references "
                             f"({', '.join(sorted(stage.references))}), but it starts from "
                             f"{init}, a model that is built already; references choose the "
                             "parts of a preset that is built from other models.")
        return {}
    own = ref.family.references(ref.preset.config)
    unknown = sorted(set(stage.references) - set(own))
    if unknown:
        raise MoxinError(f"Stage {stage.name!r}: {init!r} is built from "
                         f"{', '.join(own) or 'no other models'}; there is no reference "
                         f"{', '.join(unknown)} to set (references.{unknown[0]}).")
    sources = {}
    for role, model in own.items():
        model = stage.references.get(role, model)
        source = _model_source(registry, variant, stage, model, out)
        resolve_model(registry, source)  # a missing folder or unknown preset: clear error now
        sources[role] = source
    return sources


def _model_source(registry: Any, variant: Variant, stage: Stage, model: str, out: Path) -> str:
    names = [s.name for s in variant.stages]
    index = names.index(stage.name)
    if model == PREVIOUS:
        if index == 0:
            raise MoxinError(f"Stage {stage.name!r} starts from 'previous' but is the first "
                             f"stage of {variant.name!r}.")
        previous = out / names[index - 1] / "hf"
        if not previous.is_dir():
            raise MoxinError(f"Stage {stage.name!r} starts from the result of stage "
                             f"{names[index - 1]!r}, which is not in {out} yet; run that stage "
                             "first (or the whole variant).")
        return str(previous)
    if model.startswith(VARIANT_PREFIX):
        return str(_variant_result(registry, model, out, stage))
    return model


def stage_processor(registry: Any, variant: Variant, stage: Stage, init: str,
                    out: Path, references: dict[str, str] | None = None) -> Path | str:
    """Where a stage's processor (tokenizer) comes from: the stage's or the variant's
    ``tokenizer`` setting (``embedded`` = trained on the embedded corpus into ``out/tokenizer``),
    else the model's own folder, else (a composite preset) where its family says."""
    if stage.model == PREVIOUS or stage.model.startswith(VARIANT_PREFIX):
        return init  # a trained model's folder carries its processor
    spec = stage.tokenizer or variant.tokenizer
    ref = resolve_model(registry, stage.model)
    if ref.is_preset and not spec and references:
        bound = ref.family.bind_references(ref.preset.config, references)
        source = ref.family.processor_source(bound)
        if source is not None:
            return source
    if spec == EMBEDDED_TOKENIZER:
        vocab = ref.family.vocab_size(ref.config())
        if vocab is None:
            raise MoxinError(f"Stage {stage.name!r}: `tokenizer: embedded` needs the vocabulary "
                             f"size of {stage.model!r}, which its family "
                             f"({ref.family.name}) does not give; name a tokenizer folder.")
        return ensure_embedded_tokenizer(out / "tokenizer", vocab)
    if spec:
        return spec
    if ref.is_preset:
        raise MoxinError(f"Stage {stage.name!r} starts from preset {stage.model!r} but names no "
                         "tokenizer; set `tokenizer` (a folder, a hub id or 'embedded').")
    return ref.source or stage.model  # the model's folder (a stage folder's hf/) or hub id
