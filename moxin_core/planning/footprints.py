"""What an objective adds to a training step's memory: sequences per example, frozen
references, how it reads the logits (``moxin plan``, docs/memory.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moxin_core.errors import MoxinError


@dataclass(frozen=True)
class ObjectiveFootprint:
    """What an objective adds to a training step's memory.

    An objective may say so itself with a ``memory_footprint()`` method returning one.

    Args:
        rows_per_example: sequences of up to ``seq_len`` tokens the model runs per example of
            the micro-batch (DPO: 2, chosen and rejected; GRPO: its completions per prompt).
        reference_models: frozen full-size copies of the model run in every step (a reference
            registered with ``ObjectiveContext.add_frozen_model``); under LoRA none is needed.
        logits_chunk: tokens of logits computed at a time (0: all at once).
        logits_path: ``cross-entropy`` (a next-token loss on fp32 logits) or ``log-probs``
            (``selective_log_softmax`` over the vocabulary).
        note: one line for the plan (what was left out, what depends on an option).
    """

    rows_per_example: int = 1
    reference_models: int = 0
    logits_chunk: int = 0
    logits_path: str = "cross-entropy"
    note: str = ""


def objective_footprint(objective: Any) -> ObjectiveFootprint:
    """What ``objective`` adds to a step: its own ``memory_footprint()`` when it has one, else
    one sequence per example, no reference, and its ``logits_chunk`` option if it has one."""
    own = getattr(objective, "memory_footprint", None)
    if callable(own):
        footprint = own()
        if not isinstance(footprint, ObjectiveFootprint):
            raise MoxinError(f"Objective {objective.name!r}: memory_footprint() returned "
                             f"{type(footprint).__name__}, not a moxin_core.planning."
                             "ObjectiveFootprint.")
        return footprint
    chunk = getattr(objective, "logits_chunk", 0)
    return ObjectiveFootprint(logits_chunk=chunk if isinstance(chunk, int) else 0)
