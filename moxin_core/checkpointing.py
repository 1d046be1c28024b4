"""Checkpoints as folders: weights in safetensors, trainer state beside them, written atomically.

Lightning's ``ModelCheckpoint`` decides *when* to save; this ``CheckpointIO`` decides *how*: each
checkpoint path becomes a folder with ``model.safetensors`` (the LightningModule's state dict) and
``trainer_state.pt`` (optimizer, scheduler, loop progress, data position, RNG, callbacks). The folder
is written under a temporary name and renamed into place, so a run killed while saving never leaves a
half-written checkpoint behind: every file is flushed to disk (``fsync``) before the rename,
and the rename itself is synced. A save that fails (a full disk) removes its partial folder,
keeps every earlier checkpoint and raises :class:`CheckpointWriteError`, which ``moxin train``
reports with the last good checkpoint.

``checksum.json`` beside the weights records their SHA-256 (the run's manifest lists every
checkpoint's); the trainer state holds only tensors and plain containers, so it is read with
``torch.load(weights_only=True)``: loading a checkpoint never runs code from the file.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors.torch import load_file, save_file

from moxin_core.errors import MoxinError
from moxin_core.faults import fault_point
from moxin_core.reporting import sha256_file

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
CHECKSUM = "checksum.json"


class CheckpointWriteError(MoxinError):
    """A checkpoint could not be written (the earlier ones are untouched)."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path, self.error = path, error
        super().__init__(f"Could not write checkpoint {path}: {error.strerror or error}.")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        try:
            tmp.mkdir(parents=True)
            rest = dict(checkpoint)
            save_file(_unshared(rest.pop("state_dict")), tmp / WEIGHTS)
            torch.save(rest, tmp / STATE)
            (tmp / CHECKSUM).write_text(json.dumps({WEIGHTS: sha256_file(tmp / WEIGHTS)}) + "\n")
            for name in (WEIGHTS, STATE, CHECKSUM):
                _fsync(tmp / name)
            _fsync(tmp)
            fault_point("checkpoint-write")
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(path, error) from error
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync(path.parent)

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
    try:  # tensors and plain containers only: nothing in the file can run code
        checkpoint = torch.load(path / STATE, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise MoxinError(f"{path / STATE} holds objects other than tensors and plain values "
                         f"({str(error).splitlines()[-1][:200]}); moxin does not unpickle "
                         "them. A checkpoint written by a moxin older than this one cannot be "
                         "resumed; start the stage again.") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise MoxinError(f"{path / STATE} cannot be read as a moxin trainer state "
                         f"({str(error).splitlines()[0][:200]}); the checkpoint is damaged. "
                         "Move it aside to resume from the one before it.") from None
    if weights and (path / CHECKSUM).exists():
        expected = json.loads((path / CHECKSUM).read_text()).get(WEIGHTS)
        if expected and sha256_file(path / WEIGHTS) != expected:
            raise MoxinError(f"{path / WEIGHTS} does not match the SHA-256 recorded when it was "
                             f"written ({path / CHECKSUM}): the checkpoint is damaged. Move it "
                             "aside to resume from the one before it.")
    checkpoint["state_dict"] = load_file(path / WEIGHTS, device="cpu") if weights else {}
    return checkpoint


def _complete(folder: Path) -> bool:
    """A checkpoint folder renamed into place (a ``.partial`` one was being written when the run
    died: never resumed from, even with all its files)."""
    return (folder.is_dir() and not folder.name.endswith(".partial")
            and (folder / WEIGHTS).exists() and (folder / STATE).exists())


def checkpoint_hashes(directory: str | os.PathLike) -> dict[str, str]:
    """``{checkpoint folder name: weights SHA-256}`` of the complete checkpoints in
    ``directory`` (from their ``checksum.json``)."""
    directory = Path(directory)
    hashes = {}
    for child in sorted(directory.iterdir()) if directory.is_dir() else []:
        record = child / CHECKSUM
        if _complete(child) and record.exists():
            hashes[child.name] = json.loads(record.read_text())[WEIGHTS]
    return hashes


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete checkpoint folder with the highest step in ``directory`` (or None)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = []
    for child in directory.iterdir():
        if _complete(child):
            step = int("".join(c for c in child.name.split("step=")[-1] if c.isdigit()) or -1)
            candidates.append((step, child))
    return max(candidates)[1] if candidates else None
