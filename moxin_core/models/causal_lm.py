"""``causal-lm``: the built-in model family, any transformers causal LM and its tokenizer.

Folders it writes are plain transformers folders (``config.json``, ``model.safetensors``,
tokenizer files with ``tokenizer.model``, chat template, generation config) that
``AutoModelForCausalLM.from_pretrained`` loads without moxin, plus ``moxin.json``.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch

from moxin_core.errors import MoxinError
from moxin_core.models.family import DEFAULT_FAMILY, ModelFamily, write_family_file
from moxin_core.tokenizer import load_tokenizer, reply_stop_ids


def generation_config_for(tokenizer: Any):
    """Stop on ``</s>`` and on the chat end marker; greedy by default."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=reply_stop_ids(tokenizer),
                            pad_token_id=tokenizer.eos_token_id, do_sample=False)


def save_tokenizer(tokenizer: Any, out: Path, tokenizer_dir: str | Path | None) -> None:
    """``tokenizer.save_pretrained`` plus the sentencepiece ``tokenizer.model`` it does not write
    (GGUF converters and sentencepiece users need it)."""
    tokenizer.save_pretrained(out)
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.model").exists():
        shutil.copy2(Path(tokenizer_dir) / "tokenizer.model", Path(out) / "tokenizer.model")


def check_weights(folder: Path) -> None:
    """A model folder must hold weights transformers can read: some ``*.safetensors`` (or
    ``pytorch_model*.bin``), each with a complete header (a truncated or overwritten file fails
    here, naming it, instead of deep inside ``from_pretrained``)."""
    from safetensors import safe_open

    safetensors = sorted(folder.glob("*.safetensors"))
    if not safetensors and not any(folder.glob("pytorch_model*.bin")):
        raise MoxinError(f"Model folder {str(folder)!r} has no weights: no model.safetensors "
                         "(nor model-*.safetensors or pytorch_model.bin). Copy the whole folder "
                         "again, or export the model again (`moxin export STAGE --format hf "
                         "--out DIR`).")
    for file in safetensors:
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as exc:
            raise MoxinError(f"{file} is truncated or corrupt (safetensors: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). "
                             "Copy the model folder again, or export the model again "
                             "(`moxin export STAGE --format hf --out DIR`).") from None


class CausalLMFamily(ModelFamily):
    """transformers ``AutoModelForCausalLM`` models (the Moxin/Mistral presets among them)."""

    name = DEFAULT_FAMILY

    # -- configs
    def load_config(self, source: str) -> Any:
        from transformers import AutoConfig

        path = Path(source).expanduser()
        try:
            # never run Python code shipped with a model (and never ask: a piped "y" would do)
            return AutoConfig.from_pretrained(path if path.is_dir() else source,
                                              trust_remote_code=False)
        except Exception as exc:
            if "custom code" in str(exc):
                raise MoxinError(
                    f"{source!r} needs Python code of its own to load (its config.json names "
                    "custom classes in auto_map); moxin never runs code shipped with a model "
                    "(trust_remote_code stays off). Convert it to a standard transformers "
                    "architecture, or load it with a model family plugin that implements "
                    "it.") from None
            raise MoxinError(
                f"Could not read a model config from {source!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}). Give a preset name (`moxin models`), a "
                "model folder with config.json, or a hub id reachable from this machine.") from None

    def fit_config(self, config: Any, processor: Any) -> Any:
        """At least as many embedding rows as the tokenizer has entries."""
        config = copy.deepcopy(config)
        if processor is not None:
            config.vocab_size = max(config.vocab_size, len(processor))
        return config

    def config_to_dict(self, config: Any) -> dict[str, Any]:
        return config.to_dict()

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        from transformers import AutoConfig

        data = dict(data)
        return AutoConfig.for_model(data.pop("model_type"), **data)

    def max_length(self, config: Any) -> int | None:
        return getattr(config, "max_position_embeddings", None)

    # -- models
    def build(self, config: Any) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    def load(self, source: str) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        path = Path(source).expanduser()
        if path.is_dir():
            check_weights(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(path if path.is_dir() else source,
                                                         dtype=torch.float32,
                                                         trust_remote_code=False)
        except Exception as exc:  # transformers' errors name no remedy; keep its first line
            raise MoxinError(
                f"Could not load the model at {source!r} ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}). Give a "
                "complete model folder (config.json and model.safetensors, as `moxin export "
                "--format hf` writes) or a hub id reachable from this machine.") from None
        return model.train()  # from_pretrained returns a model in eval mode

    def save(self, model: torch.nn.Module, processor: Any, out: Path,
             processor_source: str | Path | None = None) -> Path:
        out = Path(out)
        if processor is not None:
            model.generation_config = generation_config_for(processor)
        model.save_pretrained(out, safe_serialization=True)
        if processor is not None:
            self.save_processor(processor, out, processor_source)
        write_family_file(out, self.name)
        return out

    def check(self, model: torch.nn.Module, processor: Any, seq_len: int, where: str) -> None:
        config = model.config
        if processor is not None and len(processor) > config.vocab_size:
            raise MoxinError(f"{where}: the tokenizer has {len(processor)} entries but the model "
                             f"only {config.vocab_size} embedding rows; use the model's own "
                             "tokenizer.")
        limit = self.max_length(config)
        if limit is not None and seq_len > limit:
            raise MoxinError(f"{where}: seq_len {seq_len} exceeds the model's "
                             f"max_position_embeddings ({limit}); lower seq_len to {limit} or "
                             "less, or start from a model with more positions.")

    # -- processors
    def load_processor(self, source: str | Path) -> Any:
        return load_tokenizer(source)

    def save_processor(self, processor: Any, out: Path,
                       source: str | Path | None = None) -> None:
        save_tokenizer(processor, Path(out), source)

    # -- sharding
    def init_weights(self, model: torch.nn.Module) -> None:
        # transformers' own initialisation: normal weights, unit norms, rotary frequencies
        for module in model.modules():
            model._init_weights(module)

    def state_dict_for_loading(self, source: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        folder = Path(source).expanduser()
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not files:
            raise MoxinError(f"{source}: no safetensors weights to load into a sharded model; "
                             "give a local folder with model*.safetensors.")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(file))
        return state
