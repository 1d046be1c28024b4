"""Hook implementations of moxin-plugin-lmeval: the ``moxin eval`` command, the ``lm-eval``
evaluator and its during-training callback."""

from __future__ import annotations

from typing import Any

from moxin_core.api import hookimpl

EVALUATOR = "lm-eval"


@hookimpl
def moxin_commands() -> dict[str, Any]:
    """``eval``: score models with lm-evaluation-harness."""
    from moxin_plugin_lmeval.command import EvalCommand

    return {"eval": EvalCommand}


@hookimpl
def moxin_evaluators() -> dict[str, Any]:
    """``lm-eval``: ``{name: lm-eval, suite: tiny}`` or ``{name: lm-eval, tasks: [a, b],
    num_fewshot, limit, batch_size, every_n_steps}``."""
    from moxin_plugin_lmeval.evaluator import LmEval  # light: lm-eval loads when it scores

    return {EVALUATOR: LmEval}


@hookimpl
def moxin_callbacks(stage: Any, out_dir: Any) -> list:
    """A stage listing ``{name: lm-eval, every_n_steps: N, ...}`` also scores the model in
    memory every N steps."""
    callbacks = []
    for entry in stage.evaluators:
        if isinstance(entry, dict) and entry.get("name") == EVALUATOR and \
                entry.get("every_n_steps"):
            from moxin_plugin_lmeval.callback import LmEvalCallback
            from moxin_plugin_lmeval.evaluator import LmEval

            options = {k: v for k, v in entry.items() if k != "name"}
            callbacks.append(LmEvalCallback(LmEval(**options), int(entry["every_n_steps"]),
                                           out_dir))
    return callbacks
