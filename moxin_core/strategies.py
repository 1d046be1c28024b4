"""Distributed strategies as moxin configures them.

``strategy: fsdp`` in a stage is FSDP2 (``torch.distributed.fsdp.fully_shard``) through
Lightning's ``ModelParallelStrategy``: every rank holds a shard of every parameter (pure data
parallelism, no tensor parallelism); the family names the blocks sharded one by one (the decoder
layers); the model is built on the meta device and materialised shard by shard
(``MoxinModule.configure_model``). Checkpoints hold the full weights and optimizer state in
moxin's folder format (gathered to rank 0 when saving; rank 0 reads and broadcasts when
resuming). Unlike Lightning's ``FSDPStrategy`` (FSDP1, GPU only), this runs on CPUs with gloo
too. Other strategy names (``auto``, ``ddp``, ``deepspeed``, ...) go to Lightning unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy

from moxin_core.checkpointing import load_checkpoint_folder

SHARDED = ("fsdp",)


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over every rank, with full checkpoints in moxin's folder format."""

    strategy_name = "moxin_fsdp"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # Lightning's default is one group per node
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """A moxin checkpoint folder into the sharded trained model and its optimizer."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict,
                                                             set_optimizer_state_dict)
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        path = Path(self.broadcast(str(checkpoint_path)))
        checkpoint = load_checkpoint_folder(path, weights=self.is_global_zero)
        module = self.lightning_module
        state = checkpoint.pop("state_dict")
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                   strict=module.strict_loading)
        set_model_state_dict(module.model, {k.removeprefix("model."): v for k, v in state.items()
                                            if k.startswith("model.")}, options=options)
        for optimizer, saved in zip(self.optimizers, checkpoint["optimizer_states"]):
            if saved.get("state") and isinstance(next(iter(saved["state"])), int):
                # Lightning saves parameter ids; loading needs names
                saved = FullyShardedDataParallel.rekey_optim_state_dict(
                    saved, OptimStateKeyType.PARAM_NAME, module)
            saved = {"state": {k.removeprefix("model."): v for k, v in saved["state"].items()},
                     "param_groups": [dict(g, params=[p.removeprefix("model.")
                                                      for p in g["params"]])
                                      for g in saved["param_groups"]]}
            set_optimizer_state_dict(module.model, optimizer, optim_state_dict=saved,
                                     options=options)
        return checkpoint


def build_strategy(name: str) -> str | Strategy:
    """The Lightning strategy for a stage's ``strategy`` setting. ``ddp`` keeps the gradients
    in DDP's all-reduce buckets (``gradient_as_bucket_view``) instead of in a second buffer of
    the same size."""
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(gradient_as_bucket_view=True)
    return FSDP2Strategy() if name in SHARDED else name


def is_sharded(strategy: Any) -> bool:
    """Whether the trained model is sharded across ranks under ``strategy``."""
    return isinstance(strategy, FSDP2Strategy)


def shard(module: torch.nn.Module, block_types: tuple[type, ...], mesh: Any) -> None:
    """``fully_shard`` every block of ``block_types``, then the module itself."""
    from torch.distributed.fsdp import fully_shard

    for submodule in module.modules():
        if block_types and isinstance(submodule, block_types):
            fully_shard(submodule, mesh=mesh)
    fully_shard(module, mesh=mesh)
