"""The objective contract: records -> examples -> batches -> loss.

An objective owns everything that differs between LM, SFT, DPO and GRPO. The core's
``MoxinModule`` calls ``loss(model, batch)`` in its training step and logs the metrics; the data
module asks the objective for an ``ExampleBuilder`` (records to examples, e.g. tokenise and pack)
and for ``collate`` (examples to a batch of tensors).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from moxin_core.data.packing import ExampleBuilder


class Objective(ABC):
    """Base class for objectives registered through ``moxin_objectives``."""

    name: str = "objective"

    @abstractmethod
    def example_builder(self, tokenizer: Any, seq_len: int) -> ExampleBuilder:
        """A stateful builder turning records into examples of at most ``seq_len`` tokens."""

    @abstractmethod
    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Stack examples into a batch of tensors."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss for one micro-batch, and metrics (detached scalars) to log."""

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens processed by the model in ``batch`` (for tokens/s)."""
        return int(batch["input_ids"].numel())

    def setup(self, module: Any) -> None:
        """Called once when the LightningModule is set up (reference models, generators, ...)."""
