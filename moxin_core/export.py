"""Exporting trained models: the built-in ``hf`` exporter and the stage-folder helpers.

A finished stage folder holds its model in ``hf/``, written by the model's family (for causal
LMs a folder plain transformers loads without moxin). ``moxin export STAGE --format hf`` copies
it through the family, or, for an unfinished stage, rebuilds the model from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from moxin_core.checkpointing import WEIGHTS, latest_checkpoint
from moxin_core.errors import MoxinError
from moxin_core.faults import fault_point
from moxin_core.models.family import ModelFamily, get_family
from moxin_core.models.loading import resolve_model_folder  # noqa: F401  (moxin_core.export's name too)

MODULE_PREFIX = "model."  # MoxinModule keeps the trained model in `self.model`
#: a stage folder's model description: ``{"family": NAME, "config": {...}}``
STAGE_MODEL_FILE = "model.json"


def write_stage_model(stage_dir: Path, family: ModelFamily, config: Any) -> None:
    """Record a stage's model family and config (to rebuild it from a checkpoint)."""
    (Path(stage_dir) / STAGE_MODEL_FILE).write_text(json.dumps(
        {"family": family.name, "config": family.config_to_dict(config)}, indent=2,
        default=str) + "\n")


def stage_model(registry: Any, stage_dir: Path) -> tuple[ModelFamily, Any]:
    """The family and config a stage folder recorded."""
    data = json.loads((Path(stage_dir) / STAGE_MODEL_FILE).read_text())
    family = get_family(registry, data["family"])
    return family, family.config_from_dict(data["config"])


def model_from_state(family: ModelFamily, config: Any, state: dict[str, torch.Tensor]
                     ) -> torch.nn.Module:
    """An unsharded model of ``config`` holding the trained weights of a ``MoxinModule`` state
    dict (keys ``model.*``)."""
    if any(".lora_A." in key for key in state):
        raise MoxinError("This checkpoint holds LoRA adapters only (the frozen base is rebuilt "
                         "from the starting model, not saved with every checkpoint): finish the "
                         "stage with the same command and --resume, then export its hf/ "
                         "folder, where the adapters are merged.")
    model = family.build(config)
    model.load_state_dict({k[len(MODULE_PREFIX):]: v for k, v in state.items()
                           if k.startswith(MODULE_PREFIX)})
    return model


def model_from_stage_checkpoint(registry: Any, stage_dir: Path
                                ) -> tuple[torch.nn.Module, Any, Path, ModelFamily]:
    """Rebuild the model of an unfinished stage from its latest checkpoint."""
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(stage_dir / "checkpoints")
    if ckpt is None or not (stage_dir / STAGE_MODEL_FILE).exists():
        raise MoxinError(f"{stage_dir} has no finished export and no checkpoint to export from.")
    family, config = stage_model(registry, stage_dir)
    model = model_from_state(family, config, load_file(ckpt / WEIGHTS))
    processor_dir = stage_dir / "tokenizer"
    return model, family.load_processor(processor_dir), processor_dir, family


def export_hf(model_path: str | Path, out: str | Path, force: bool = False,
              registry: Any = None, **options: Any) -> Path:
    """Export a stage folder (finished or from its last checkpoint) or a model folder to ``out``
    through the model's family. It takes no options: any raises MoxinError (the exporter
    contract; a TypeError would reach a Python caller as a traceback)."""
    from moxin_core.models.family import family_for_source
    from moxin_core.plugins import Registry

    if options:
        raise MoxinError(f"Exporter 'hf' does not take option(s) {', '.join(sorted(options))} "
                         "(it takes none; --force replaces an existing output).")
    registry = registry or Registry()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MoxinError(f"Output {str(out)!r} is a file; --out names the folder to export to.")
    if out.exists() and any(out.iterdir()) and not force:
        raise MoxinError(f"Output {str(out)!r} exists and is not empty; pass --force to replace "
                         "it.")
    path = Path(model_path).expanduser()
    if (path / "checkpoints").is_dir() and not (path / "hf").is_dir():
        model, processor, processor_dir, family = model_from_stage_checkpoint(registry, path)
    else:
        folder = resolve_model_folder(path)
        family = family_for_source(registry, str(folder))
        model, processor, processor_dir = (family.load(str(folder)),
                                           family.load_processor(folder), folder)
    from moxin_core.mof import stage_of, write_openness_report

    save_atomically(family, model, processor, out, processor_dir)
    write_openness_report(out, stage_of(path))
    return out


def save_atomically(family: ModelFamily, model: torch.nn.Module, processor: Any, out: Path,
                    processor_source: str | Path | None = None) -> Path:
    """``family.save`` into a staging folder renamed onto ``out`` (never half-written)."""
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    family.save(model, processor, staging, processor_source)
    fault_point("export")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def save_model(model: torch.nn.Module, processor: Any, out: str | Path,
               processor_source: str | Path | None = None,
               family: ModelFamily | None = None) -> Path:
    """Write ``model`` and its processor as a model folder through ``family`` (default
    ``causal-lm``: a transformers folder), atomically."""
    from moxin_core.models.causal_lm import CausalLMFamily

    return save_atomically(family or CausalLMFamily(), model, processor, Path(out),
                           processor_source)
