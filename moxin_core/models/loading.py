"""Loading a trained model through its family: a stage folder, a model folder or a hub id.

Kept light (no Lightning): ``moxin eval``, the runtimes and evaluators load models without the
training machinery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moxin_core.errors import MoxinError
from moxin_core.models.family import ModelFamily, family_for_source


def resolve_model_folder(path: str | Path) -> Path:
    """The model folder for ``path``: itself, or a stage folder's ``hf/``."""
    path = Path(path).expanduser()
    if (path / "config.json").exists() or (path / "moxin.json").exists():
        return path
    if (path / "hf" / "config.json").exists() or (path / "hf" / "moxin.json").exists():
        return path / "hf"
    if not path.exists():
        raise MoxinError(f"Model {str(path)!r} does not exist. Give a stage folder "
                         "(OUT/STAGE from `moxin train`) or a model folder.")
    raise MoxinError(f"{str(path)!r} is neither a model folder (no config.json) nor a finished "
                     "stage folder (no hf/). For an interrupted stage, run "
                     f"`moxin export {path} --format hf --out DIR`, which uses its last "
                     "checkpoint.")


def load_model(source: str | Path, registry: Any = None) -> tuple[Any, Any, ModelFamily]:
    """``(model, processor, family)`` of a trained model: a stage folder, a model folder or a
    hub id, through its family (``registry``: the installed plugins by default); the model in
    eval mode on the CPU."""
    from moxin_core.plugins import Registry

    registry = registry or Registry()
    folder = resolve_model_folder(source) if Path(source).expanduser().exists() else str(source)
    family = family_for_source(registry, str(folder))
    model, processor = family.load(str(folder)).eval(), family.load_processor(folder)
    # a folder whose tokenizer outgrew the model's embeddings fails here, not inside torch
    family.check(model, processor, 0, f"model {str(source)!r}")
    return model, processor, family
