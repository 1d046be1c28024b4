"""The objective contract: records -> examples -> batches -> loss, with a context and a state.

An objective owns everything that differs between LM, SFT, DPO and GRPO. The core's
``MoxinModule`` calls ``setup(context)`` once, ``loss(model, batch)`` in every training step and
logs the metrics; the data module asks the objective for an example builder (records to
examples, e.g. tokenise and pack) and for ``collate`` (examples to a batch of tensors). An
objective's ``state_dict()`` is saved in every checkpoint (per rank) and given back to
``load_state_dict`` on resume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch

from moxin_core.data.packing import ExampleBuilder

if TYPE_CHECKING:
    from moxin_core.objectives.context import ObjectiveContext


class Objective(ABC):
    """Base class for objectives registered through ``moxin_objectives``."""

    name: str = "objective"

    #: set by ``setup``; None in a bare loop that never calls it
    context: ObjectiveContext | None = None

    #: the logged metric holding the loss per token when ``loss`` is something else (a sum over
    #: tokens): ``moxin train`` reports it beside the loss. None: the loss is per token already,
    #: or tokens are not its unit.
    token_loss_metric: str | None = None

    #: consecutive training steps that receive each batch (GRPO's mu policy updates per rollout:
    #: the objective keeps what it computed from the batch the first time). Exact resume holds
    #: between repeats too: the data position records which repeat comes next.
    batch_repeats: int = 1

    #: ``num_tokens`` is asked after ``loss`` instead of on the collated batch (GRPO: the
    #: completions it counts are generated inside ``loss``)
    tokens_after_loss: bool = False

    @abstractmethod
    def example_builder(self, processor: Any, seq_len: int) -> ExampleBuilder:
        """A stateful builder turning records into examples of at most ``seq_len`` tokens
        (``processor``: the model family's processor, a tokenizer for causal LMs)."""

    @abstractmethod
    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Stack examples into a batch of tensors."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss for one micro-batch, and metrics (detached scalars) to log."""

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens processed by the model in ``batch`` (for tokens/s). ``MoxinDataModule`` asks
        on the batch as collated, on the CPU before it moves to the device, so counting never
        waits for the device (``MoxinModule`` asks after ``loss`` when ``tokens_after_loss``
        is set)."""
        return int(batch["input_ids"].numel())

    def setup(self, context: ObjectiveContext) -> None:
        """Called once per fit, before the model is placed on its device and before a checkpoint
        is restored: register frozen helper models (``context.add_frozen_model``) here."""
        self.context = context

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Called once per fit as soon as the trained model exists (under a sharding strategy
        after it is sharded and filled), before the optimiser is built: choose what trains here
        (``requires_grad``); the optimiser takes the parameters that require gradients."""

    def on_fit_start(self) -> None:
        """Called once per fit when the model is on its device and a resumed run's checkpoint is
        restored, before the first step (precomputations run here)."""

    def state_dict(self) -> dict[str, Any]:
        """The objective's own state (counters, caches of small size, ...) for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (called on resume, after ``setup``)."""
