"""The generic LightningModule: holds an HF causal LM and delegates the loss to an objective."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from transformers import get_scheduler

from moxin_core.objectives.base import Objective
from moxin_core.variants import HyperParameters


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: no decay on norms, biases and other 1-D parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, hp: HyperParameters) -> torch.optim.Optimizer:
    """AdamW as moxin uses it (also used by the bare-loop benchmark, so both compare equal)."""
    return torch.optim.AdamW(optimizer_groups(model, hp.weight_decay), lr=hp.lr,
                             betas=(hp.adam_beta1, hp.adam_beta2), eps=hp.adam_eps)


def build_scheduler(optimizer: torch.optim.Optimizer, hp: HyperParameters):
    """Warmup then cosine (to ``min_lr_ratio``), linear (to 0) or constant, per optimizer step."""
    if hp.schedule == "cosine":
        return get_scheduler("cosine_with_min_lr", optimizer, hp.total_warmup_steps, hp.max_steps,
                             scheduler_specific_kwargs={"min_lr_rate": hp.min_lr_ratio})
    name = "linear" if hp.schedule == "linear" else "constant_with_warmup"
    return get_scheduler(name, optimizer, hp.total_warmup_steps, hp.max_steps)


class MoxinModule(pl.LightningModule):
    """Trains ``model`` with ``objective``; everything objective-specific stays in the objective.

    Args:
        model: a ``transformers`` causal LM (or any module the objective knows how to call).
        objective: the objective whose ``loss(model, batch)`` is minimised.
        hparams: optimiser and schedule settings (``HyperParameters``).
    """

    def __init__(self, model: torch.nn.Module, objective: Objective,
                 hparams: HyperParameters | None = None) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.train_hparams = hparams or HyperParameters()
        self.tokens_seen = 0

    def setup(self, stage: str) -> None:
        self.objective.setup(self)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.objective.loss(self.model, batch)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"Non-finite loss ({loss.item()}) at step {self.global_step}; lower the learning "
                "rate or check the data. The last checkpoint is untouched.")
        self.tokens_seen += self.objective.num_tokens(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.train_hparams)
        scheduler = build_scheduler(optimizer, self.train_hparams)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["moxin_tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = checkpoint.get("moxin_tokens_seen", 0)
