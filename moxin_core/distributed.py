"""Rank facts and collectives that work the same in one process and in many.

Before Lightning starts the process group (``moxin train`` resolves the variant, writes the stage
folder and builds the data first) the rank comes from the launcher's environment: ``RANK``
(torchrun), ``SLURM_PROCID`` (srun), or ``NODE_RANK``/``LOCAL_RANK`` (Lightning's own launcher,
which re-runs the command for ranks 1..N-1). Afterwards ``torch.distributed`` answers; every
helper here is a no-op in a single process.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank in the process group (0 before the group exists or without one)."""
    return dist.get_rank() if initialized() else 0


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, the one that writes shared files, also before the
    process group exists (then the launcher's environment tells)."""
    if initialized():
        return dist.get_rank() == 0
    if os.environ.get("RANK", "").isdigit():  # torchrun, torch.distributed.launch
        return int(os.environ["RANK"]) == 0
    if os.environ.get("SLURM_PROCID", "").isdigit() and "SLURM_NTASKS" in os.environ:
        return int(os.environ["SLURM_PROCID"]) == 0
    # Lightning's launcher starts ranks 1..N-1 with LOCAL_RANK (and NODE_RANK on other nodes)
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (every rank gets the list; collective)."""
    if not initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor; collective)."""
    if not initialized() or dist.get_world_size() == 1:
        return tensor
    device = tensor.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # NCCL reduces GPU tensors
    total = tensor.detach().to(device, copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def shutdown() -> None:
    """Leave the process group at the end of a run, so that no backend thread is still running
    when the interpreter exits (gloo then aborts a rank now and then with "terminate called
    without an active exception", failing a finished torchrun launch)."""
    if initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if initialized() and dist.get_world_size() > 1:
        dist.barrier()


def per_rank(state: Any) -> dict[str, Any]:
    """Checkpoint form of a per-rank state: every rank's, gathered (collective)."""
    return {"per_rank": gather_objects(state)}


def this_rank(saved: Any) -> Any:
    """This rank's part of a state saved by :func:`per_rank` (or a single-process state).

    A checkpoint saved by a different number of ranks is an error: its per-rank data (stream
    positions, RNG states) cannot be redistributed exactly.
    """
    if not isinstance(saved, dict) or "per_rank" not in saved:
        return saved
    states = saved["per_rank"]
    if len(states) != world_size():
        from moxin_core.errors import MoxinError

        raise MoxinError(f"This checkpoint was saved by {len(states)} processes and is resumed by "
                         f"{world_size()}; resume with the same number of devices and nodes.")
    return states[rank()]
