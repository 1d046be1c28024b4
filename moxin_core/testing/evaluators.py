"""The contract check of evaluators (``moxin_evaluators``): what ``moxin train`` relies on when
it resolves a stage's evaluators and runs them on the stage's model."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moxin_core.errors import MoxinError
from moxin_core.testing.contracts import ContractError, component_name, file_digests

#: an option no evaluator takes
UNKNOWN_OPTION = "no_such_option"


def check_evaluator(factory: Callable[..., Callable[..., dict[str, float]]],
                    model_path: str | Path, options: dict[str, Any] | None = None,
                    reference: str | Path | None = None,
                    build_seconds: float = 10.0) -> dict[str, float]:
    """The contracts of the evaluator ``factory(**options)`` on the model folder ``model_path``,
    called as ``moxin train`` calls it: ``evaluate(str(model_path))``, plus
    ``reference=str(reference or model_path)`` when ``evaluate`` has a ``reference`` parameter
    (the model the stage started from):

    * **cheap to build**: ``factory(**options)`` returns within ``build_seconds`` (the core
      builds every stage's evaluators when it resolves the variant, before training; the work
      belongs in ``evaluate``);
    * **rejects unknown options**: an option the factory does not take fails with
      :class:`~moxin_core.MoxinError`, from the core's check of the factory's signature or, for
      a factory taking ``**options``, from the factory itself;
    * **evaluates the model**: ``evaluate`` returns without raising;
    * **scores are named numbers**: a dict of ``str`` to int or float (not bool) and
      **finite scores**;
    * **deterministic**: a second evaluator built alike gives the same scores;
    * **leaves the model alone**: the files of ``model_path`` (and of ``reference``) are
      unchanged.

    Returns the scores.
    """
    from moxin_core.training.resolve import check_evaluator_options

    options = dict(options or {})
    start = time.perf_counter()
    evaluate = factory(**options)
    took = time.perf_counter() - start
    name = component_name(evaluate)
    if took > build_seconds:
        raise ContractError(name, "cheap to build", f"factory(**{options}) took {took:.1f} s "
                            f"(more than {build_seconds} s); load models and data in evaluate")
    if not callable(evaluate):
        raise ContractError(name, "evaluates the model", f"factory(**{options}) returned "
                            f"{evaluate!r}, which is not callable")

    bad = {**options, UNKNOWN_OPTION: True}
    try:
        check_evaluator_options(name, factory, bad)
        factory(**bad)
    except MoxinError:
        pass
    except Exception as error:
        raise ContractError(name, "rejects unknown options", f"factory(**{bad}) raised "
                            f"{type(error).__name__}: {error}; raise MoxinError naming the "
                            "option") from error
    else:
        raise ContractError(name, "rejects unknown options", f"factory(**{bad}) accepted "
                            f"{UNKNOWN_OPTION}")

    kwargs = {}
    if "reference" in inspect.signature(evaluate).parameters:
        kwargs["reference"] = str(reference or model_path)
    folders = [Path(model_path)] + ([Path(reference)] if reference else [])
    before = [file_digests(folder) for folder in folders]
    scores = _evaluate(name, evaluate, model_path, kwargs)
    changed = [str(f) for f, digests in zip(folders, before) if file_digests(f) != digests]
    if changed:
        raise ContractError(name, "leaves the model alone", f"evaluate changed the files of "
                            f"{', '.join(changed)}")
    again = _evaluate(name, factory(**options), model_path, kwargs)
    if again != scores:
        raise ContractError(name, "deterministic", f"a second evaluator built alike gave "
                            f"{again} for {scores}")
    return scores


def _evaluate(name: str, evaluate: Callable, model_path: str | Path,
              kwargs: dict[str, Any]) -> dict[str, float]:
    call = f"evaluate({str(model_path)!r}{''.join(f', {k}={v!r}' for k, v in kwargs.items())})"
    try:
        scores = evaluate(str(model_path), **kwargs)
    except Exception as error:
        raise ContractError(name, "evaluates the model", f"{call} raised "
                            f"{type(error).__name__}: {error}") from error
    if not isinstance(scores, dict) or not scores:
        raise ContractError(name, "scores are named numbers", f"{call} returned {scores!r}, "
                            "not a non-empty dict of scores")
    for key, value in scores.items():
        if not isinstance(key, str) or isinstance(value, bool) or \
                not isinstance(value, (int, float)):
            raise ContractError(name, "scores are named numbers", f"{call} gave {key!r}: "
                                f"{type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ContractError(name, "finite scores", f"{call} gave {key!r}: {value}")
    return scores
