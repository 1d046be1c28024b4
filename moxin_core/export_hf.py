"""The built-in ``hf`` exporter: a folder that plain transformers loads without moxin."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from moxin_core.checkpointing import WEIGHTS, latest_checkpoint
from moxin_core.errors import MoxinError
from moxin_core.tokenizer import load_tokenizer

MODULE_PREFIX = "model."  # MoxinModule keeps the HF model in `self.model`


def generation_config_for(tokenizer: Any) -> GenerationConfig:
    """Stop on ``</s>`` and on the chat end marker; greedy by default."""
    eos = [tokenizer.eos_token_id]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        eos.append(end_of_turn)
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                            pad_token_id=tokenizer.eos_token_id, do_sample=False)


def save_tokenizer(tokenizer: Any, out: Path, tokenizer_dir: str | Path | None) -> None:
    """``tokenizer.save_pretrained`` plus the sentencepiece ``tokenizer.model`` it does not write
    (GGUF converters and sentencepiece users need it)."""
    tokenizer.save_pretrained(out)
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.model").exists():
        shutil.copy2(Path(tokenizer_dir) / "tokenizer.model", Path(out) / "tokenizer.model")


def save_hf_folder(model: torch.nn.Module, tokenizer: Any, out: str | Path,
                   tokenizer_dir: str | Path | None = None) -> Path:
    """Write ``config.json``, safetensors weights, tokenizer files (with ``tokenizer.model``),
    chat template and generation config to ``out``."""
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.generation_config = generation_config_for(tokenizer)
    model.save_pretrained(staging, safe_serialization=True)
    save_tokenizer(tokenizer, staging, tokenizer_dir)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def resolve_model_folder(path: str | Path) -> Path:
    """An HF folder for ``path``: itself, or a stage folder's ``hf/``."""
    path = Path(path).expanduser()
    if (path / "config.json").exists():
        return path
    if (path / "hf" / "config.json").exists():
        return path / "hf"
    if not path.exists():
        raise MoxinError(f"Model {str(path)!r} does not exist. Give a stage folder "
                         "(OUT/STAGE from `moxin train`) or an HF model folder.")
    raise MoxinError(f"{str(path)!r} is neither an HF model folder (no config.json) nor a finished "
                     "stage folder (no hf/config.json). For an interrupted stage, run "
                     f"`moxin export {path} --format hf --out DIR`, which uses its last checkpoint.")


def model_from_stage_checkpoint(stage_dir: Path) -> tuple[torch.nn.Module, Any, Path]:
    """Rebuild the HF model of an unfinished stage from its latest checkpoint."""
    ckpt = latest_checkpoint(stage_dir / "checkpoints")
    if ckpt is None or not (stage_dir / "model_config.json").exists():
        raise MoxinError(f"{stage_dir} has no finished export and no checkpoint to export from.")
    from safetensors.torch import load_file

    config = AutoConfig.from_pretrained(stage_dir / "model_config.json")
    model = AutoModelForCausalLM.from_config(config)
    state = {k[len(MODULE_PREFIX):]: v for k, v in load_file(ckpt / WEIGHTS).items()
             if k.startswith(MODULE_PREFIX)}
    model.load_state_dict(state)
    return model, load_tokenizer(stage_dir / "tokenizer"), stage_dir / "tokenizer"


def export_hf(model_path: str | Path, out: str | Path, force: bool = False) -> Path:
    """Export a stage folder (finished or from its last checkpoint) or an HF folder to ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise MoxinError(f"Output {str(out)!r} exists and is not empty; pass --force to replace it.")
    path = Path(model_path).expanduser()
    if (path / "checkpoints").is_dir() and not (path / "hf" / "config.json").exists():
        model, tokenizer, tokenizer_dir = model_from_stage_checkpoint(path)
    else:
        folder = resolve_model_folder(path)
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer, tokenizer_dir = load_tokenizer(folder), folder
    return save_hf_folder(model, tokenizer, out, tokenizer_dir)
