"""Checkpoints as folders: weights in safetensors, trainer state beside them, written atomically.

Lightning's ``ModelCheckpoint`` decides *when* to save; this ``CheckpointIO`` decides *how*: each
checkpoint path becomes a folder with ``model.safetensors`` (the LightningModule's state dict) and
``trainer_state.pt`` (optimizer, scheduler, loop progress, data position, RNG, callbacks). The folder
is written under a temporary name and renamed into place, so a run killed while saving never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give each its own copy."""
    seen: set[tuple[int, int]] = set()
    result = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        result[key] = tensor.clone().contiguous() if ident in seen else tensor.contiguous()
        seen.add(ident)
    return result


class FolderCheckpointIO(CheckpointIO):
    """Save/load Lightning checkpoints as ``{model.safetensors, trainer_state.pt}`` folders."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        rest = dict(checkpoint)
        save_file(_unshared(rest.pop("state_dict")), tmp / WEIGHTS)
        torch.save(rest, tmp / STATE)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_folder(Path(path))

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint_folder(path: Path, weights: bool = True) -> dict[str, Any]:
    """A checkpoint folder as Lightning's checkpoint dict (``weights=False``: an empty
    ``state_dict``, for ranks that receive the weights from rank 0). The trainer state is
    memory-mapped: a large optimizer state is read only where it is used."""
    if not (path / WEIGHTS).exists() or not (path / STATE).exists():
        raise FileNotFoundError(f"{path} is not a moxin checkpoint folder "
                                f"(needs {WEIGHTS} and {STATE})")
    # moxin wrote this file itself (it holds RNG states and data positions, not only tensors)
    checkpoint = torch.load(path / STATE, map_location="cpu", weights_only=False, mmap=True)
    checkpoint["state_dict"] = load_file(path / WEIGHTS, device="cpu") if weights else {}
    return checkpoint


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete checkpoint folder with the highest step in ``directory`` (or None)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = []
    for child in directory.iterdir():
        if child.is_dir() and (child / WEIGHTS).exists() and (child / STATE).exists():
            step = int("".join(c for c in child.name.split("step=")[-1] if c.isdigit()) or -1)
            candidates.append((step, child))
    return max(candidates)[1] if candidates else None
