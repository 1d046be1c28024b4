"""What an objective receives from the run at set-up (``Objective.setup(context)``).

Objectives never reach into Lightning's or the core's private attributes: everything they need
from the run (the processor, the registry, the stage folder, the hyper-parameters, the trainer,
the data, frozen helper models, collectives across ranks) is here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moxin_core import distributed
from moxin_core.errors import MoxinError
from moxin_core.variants import HyperParameters

if TYPE_CHECKING:
    from moxin_core.module import MoxinModule


class ObjectiveContext:
    """The run an objective is part of.

    Attributes:
        processor: the model family's processor (a tokenizer for causal LMs), or None.
        registry: the run's :class:`moxin_core.plugins.Registry`, or None in a plain script.
        stage_dir: the stage folder (``moxin train``) or the trainer's ``default_root_dir``.
        hparams: the stage's :class:`moxin_core.variants.HyperParameters`.
    """

    def __init__(self, module: MoxinModule, processor: Any = None, registry: Any = None,
                 stage_dir: str | Path | None = None,
                 hparams: HyperParameters | None = None) -> None:
        self._module = module
        self.processor, self.registry = processor, registry
        self.hparams = hparams or module.train_hparams
        # built in MoxinModule.setup, when a trainer is attached
        self.stage_dir = Path(stage_dir if stage_dir is not None
                              else module.trainer.default_root_dir)

    # -- the run
    @property
    def trainer(self) -> Any:
        """The ``lightning.Trainer`` running the fit."""
        return self._module.trainer

    @property
    def datamodule(self) -> Any:
        """The trainer's data module (a ``MoxinDataModule`` under ``moxin train``)."""
        return self.trainer.datamodule

    @property
    def device(self) -> torch.device:
        return self._module.device

    @property
    def model(self) -> torch.nn.Module:
        """The model being trained (after ``setup``: built, on its device, possibly sharded)."""
        return self._module.model

    def forward_context(self) -> Any:
        """The trainer's precision context (autocast for ``bf16-mixed``) for forward passes run
        outside a training step, so they compute as training does."""
        return self.trainer.precision_plugin.forward_context()

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    @property
    def is_rank_zero(self) -> bool:
        return distributed.is_rank_zero()

    @property
    def training_micro_batches(self) -> int:
        """Micro-batches this rank trains on in the whole stage (steps x accumulation)."""
        return self.trainer.max_steps * self.trainer.accumulate_grad_batches

    def training_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches from the start of the stage, in training order (collated on the
        CPU, built in this process), for precomputations that must see exactly the training
        data. Needs a ``MoxinDataModule``."""
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "iter_batches"):
            raise MoxinError("This objective needs the training batches up front, which only a "
                             "MoxinDataModule (moxin_core.api.build_datamodule) provides; pass "
                             "one to Trainer.fit(datamodule=...).")
        return datamodule.iter_batches()

    # -- frozen helper models
    def add_frozen_model(self, name: str, model: torch.nn.Module | None = None) -> None:
        """Register a frozen helper model (a reference policy, a reward model) with the module.

        It becomes a submodule of the LightningModule, so device placement, precision and the
        distributed strategy apply to it as to the trained model (sharded with it under FSDP);
        its parameters never require gradients and are not written to checkpoints. ``model``:
        a module, or None for a copy of the model the stage starts from (built the same way as
        the trained model: on the meta device and sharded when the strategy shards). Call it in
        ``setup``; :meth:`frozen_model` returns it afterwards.
        """
        self._module.add_frozen_model(name, model)

    def frozen_model(self, name: str) -> torch.nn.Module:
        """A model registered with :meth:`add_frozen_model` (on the training device)."""
        return self._module.frozen_model(name)

    # -- collectives (no-ops in one process)
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all ranks (every rank must call it)."""
        return distributed.all_reduce_sum(tensor)

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (every rank must call it)."""
        return distributed.gather_objects(obj)

    def barrier(self) -> None:
        distributed.barrier()
