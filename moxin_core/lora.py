"""LoRA and QLoRA through ``peft``: the stage option ``lora`` (``--set lora.r=16``).

With ``lora.r`` > 0 the trained model's linear layers get low-rank adapters and everything else
is frozen; ``lora.quantize: nf4`` also stores the frozen base weights in 4 bits (QLoRA, through
bitsandbytes). A stage then writes its adapters to ``adapter/`` (peft's format) and the model
with the adapters merged into full-precision base weights to ``hf/``, so chat, eval and every
exporter (HF, GGUF) see an ordinary model. A frozen reference (DPO, GRPO's KL term) is the
trained model with its adapters switched off: the starting model, without a second copy.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from moxin_core.errors import MoxinError
from moxin_core.variants import LORA_DEFAULTS

def lora_settings(settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """The complete settings (defaults filled in), or None when LoRA is off (``r`` 0)."""
    if not settings or not settings.get("r"):
        return None
    full = {**LORA_DEFAULTS, **settings}
    if full["alpha"] is None:
        full["alpha"] = 2 * full["r"]
    return full


@contextlib.contextmanager
def quiet_peft():
    """peft asks transformers a deprecated question (``is_gradient_checkpointing``); the
    warning is about peft's code, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def _peft_config(settings: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=settings["r"], lora_alpha=settings["alpha"],
                      lora_dropout=float(settings["dropout"]), bias="none",
                      target_modules=settings["targets"])


def _quantize_linears(model: torch.nn.Module, quant_type: str) -> None:
    """Replace the model's linear layers (not the output head) by bitsandbytes 4-bit ones
    holding the same weights, frozen: QLoRA's base model."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MoxinError(f"lora.quantize={quant_type} (QLoRA) needs bitsandbytes: pip install "
                         "'moxin-core[qlora]' (or bitsandbytes); or set lora.quantize=null.")
    import bitsandbytes as bnb

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child is head:
                continue
            quantized = bnb.nn.Linear4bit(child.in_features, child.out_features,
                                          bias=child.bias is not None, compute_dtype=dtype,
                                          quant_type=quant_type, device="meta")
            quantized.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False,
                                                 quant_type=quant_type)
            if child.bias is not None:
                quantized.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, quantized.to(device))  # moving quantizes


def apply_lora(model: torch.nn.Module, settings: dict[str, Any]) -> torch.nn.Module:
    """``model`` with LoRA adapters (a ``peft`` model; everything but the adapters frozen)."""
    from peft import get_peft_model

    if settings["quantize"]:
        _quantize_linears(model, settings["quantize"])
    try:
        with quiet_peft():
            wrapped = get_peft_model(model, _peft_config(settings))
    except ValueError as error:  # peft: target modules not found in the model
        raise MoxinError(f"lora.targets={settings['targets']!r}: {error}") from None
    return wrapped


def check_only_adapters_train(model: torch.nn.Module, objective: str) -> None:
    """Refuse an objective that chose its own trainable weights (``prepare_model``) on top of
    the adapters: LoRA's promise, a frozen base, would silently not hold."""
    extra = [name for name, p in model.named_parameters()
             if p.requires_grad and "lora_" not in name]
    if extra:
        raise MoxinError(f"lora: objective {objective!r} makes weights of the base train too "
                         f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}), so the "
                         "base would not stay frozen; train this objective without lora "
                         "(lora.r=0).")


class AdapterDisabled(torch.nn.Module):
    """The trained LoRA model with its adapters switched off, which is the starting model (the
    adapters begin at zero and the base never trains): a reference without a copy of weights.

    The model is looked up through ``get_model`` at each call and is not a sub-module, so the
    reference neither owns nor freezes the trained model's weights. It runs in the trained
    model's mode (training): with the adapters off their dropout is off too, and moxin's model
    families have no other dropout.
    """

    def __init__(self, get_model: Callable[[], torch.nn.Module]) -> None:
        super().__init__()
        object.__setattr__(self, "_get_model", get_model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        model = self._get_model()
        with model.disable_adapter():
            return model(*args, **kwargs)

    def get_decoder(self) -> torch.nn.Module:
        raise MoxinError("A LoRA reference model (the trained model with its adapters off) is "
                         "called whole; it has no separate decoder.")


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights (peft's key names), on the CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}


def merged_model(model: torch.nn.Module, settings: dict[str, Any],
                 build_base: Callable[[], torch.nn.Module] | None = None) -> torch.nn.Module:
    """An ordinary model with the adapters of ``model`` merged into full-precision base
    weights: ``build_base()`` rebuilds the starting model (needed under QLoRA, whose trained
    base is quantised); without it a copy of ``model`` is merged."""
    from peft import get_peft_model, set_peft_model_state_dict

    if build_base is None:
        if settings["quantize"]:
            raise MoxinError("Merging QLoRA adapters needs the full-precision starting model "
                             "(train through moxin train or api.build_module).")
        with quiet_peft():
            return copy.deepcopy(model).merge_and_unload()
    state = adapter_state(model)
    with quiet_peft():
        fresh = get_peft_model(build_base(), _peft_config({**settings, "quantize": None}))
        set_peft_model_state_dict(fresh, state)
        return fresh.merge_and_unload()


def save_adapter(model: torch.nn.Module, folder: Path, base: str | None) -> Path:
    """Write the adapters in peft's format (``adapter_config.json``,
    ``adapter_model.safetensors``), loadable with ``PeftModel.from_pretrained``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.peft_config["default"]
    previous = config.base_model_name_or_path
    config.base_model_name_or_path = base
    try:
        # no embedding layers to save (they are frozen), so peft need not look the base up
        model.save_pretrained(folder, save_embedding_layers=False)
    finally:
        config.base_model_name_or_path = previous
    return folder
