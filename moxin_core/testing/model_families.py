"""The contract check of model families (``moxin_model_families``): what every step that builds,
saves, reloads or shards a model relies on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from moxin_core.errors import MoxinError
from moxin_core.models.family import ModelFamily, family_name_in
from moxin_core.testing.contracts import ContractError, file_digests

#: the text whose token ids a reloaded processor must give as the original does
PROBE_TEXT = "Mia has 12 apples. She buys 7 more: how many now?"
#: what integer buffers hold before ``init_weights`` (a value no real buffer holds)
SENTINEL = -987_654_321


def check_model_family(family: ModelFamily, config: Any, processor: Any, tmp_path: str | Path,
                       inputs: dict[str, torch.Tensor] | None = None,
                       processor_source: str | Path | None = None) -> Path:
    """The contracts of ``family`` on a (small) model of ``config`` with ``processor``, the
    config first fitted to the processor (``family.fit_config``, as ``moxin train`` does);
    ``inputs`` are keyword arguments of the model's forward (default: ``input_ids``, random ids
    below the vocabulary size); files go under ``tmp_path``:

    * **config round-trips**: ``config_to_dict`` is JSON-able and ``config_from_dict`` of it
      (through JSON) gives the same dict, ``max_length`` and ``vocab_size``;
    * **builds in fp32**: ``build`` gives a ``torch.nn.Module`` whose floating-point parameters
      are float32;
    * **describe matches the model**: ``describe(config)["parameters"]`` is the built
      model's parameter count and its ``max_length`` is ``max_length(config)``;
    * **vocab_size and max_length consistent**: ``vocab_size`` covers ``len(processor)``, equals
      the input embedding rows (models with ``get_input_embeddings``), ``max_length`` is None or
      a positive int, and ``family.check`` accepts the model with that ``seq_len``;
    * **save records the family**: ``save`` returns the folder, whose ``moxin.json`` names the
      family;
    * **load gives fp32 in training mode**;
    * **save/load keeps the weights** (every tensor of the state dict equal) and **save/load
      keeps the outputs** on ``inputs`` (eval mode);
    * **processor round-trips**: ``load_processor`` of what ``save_processor`` wrote does what
      the processor does (its length, the token ids of a probe text and the chat template, of
      the processor or its ``tokenizer``; ``transform`` of a picture) and saves the same files;
    * **meta init** (families that support sharding, whose ``init_weights`` does not raise
      MoxinError): a model built on the meta device, ``to_empty`` and ``init_weights`` has the
      built model's shapes and every parameter and buffer set (filled with NaN, or a sentinel
      for integers, before ``init_weights``).

    Returns the saved model folder.
    """
    name = type(family).__name__
    if not isinstance(family, ModelFamily):
        raise ContractError(name, "a ModelFamily", f"{family!r} is no moxin_core.api.ModelFamily")
    tmp_path = Path(tmp_path)
    config = family.fit_config(config, processor)
    _check_config(name, family, config)

    torch.manual_seed(0)
    model = family.build(config)
    _check_fp32(name, "builds in fp32", model)
    count = sum(p.numel() for p in model.parameters())
    described = family.describe(config)
    if described.get("parameters") != count:
        raise ContractError(name, "describe matches the model", f"describe gives "
                            f"{described.get('parameters')!r} parameters, the built model has "
                            f"{count}")
    if described.get("max_length") != family.max_length(config):
        raise ContractError(name, "describe matches the model", f"describe gives max_length "
                            f"{described.get('max_length')!r}, max_length(config) "
                            f"{family.max_length(config)!r}")
    _check_sizes(name, family, config, model, processor)

    out = family.save(model, processor, tmp_path / "model", processor_source)
    if not isinstance(out, Path) or family_name_in(out) != family.name:
        raise ContractError(name, "save records the family", f"save returned {out!r}; expected "
                            f"the folder, with moxin.json naming {family.name!r} (found "
                            f"{family_name_in(tmp_path / 'model')!r})")
    loaded = family.load(str(out))
    _check_fp32(name, "load gives fp32 in training mode", loaded)
    if not loaded.training:
        raise ContractError(name, "load gives fp32 in training mode", "load returned a model "
                            "in eval mode")
    _check_same_weights(name, model, loaded)
    inputs = inputs if inputs is not None else _random_ids(family.vocab_size(config))
    with torch.no_grad():
        expected = _logits(model.eval()(**inputs))
        got = _logits(loaded.eval()(**inputs))
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-5, atol=1e-5):
        raise ContractError(name, "save/load keeps the outputs", "the reloaded model computes "
                            "other outputs on the same inputs")

    _check_processor(name, family, processor, tmp_path, processor_source)
    _check_meta_init(name, family, config, model)
    return out


def _check_config(name: str, family: ModelFamily, config: Any) -> None:
    try:
        data = json.loads(json.dumps(family.config_to_dict(config)))
    except (TypeError, ValueError) as error:
        raise ContractError(name, "config round-trips", f"config_to_dict gives a dict JSON "
                            f"cannot hold ({error})") from error
    back = family.config_from_dict(json.loads(json.dumps(data)))
    again = json.loads(json.dumps(family.config_to_dict(back), default=repr))
    if again != data:
        keys = sorted(k for k in set(data) | set(again) if data.get(k) != again.get(k))
        raise ContractError(name, "config round-trips", f"config_from_dict(config_to_dict) "
                            f"changes {', '.join(keys) or 'the dict'}")
    for what in ("max_length", "vocab_size"):
        if getattr(family, what)(back) != getattr(family, what)(config):
            raise ContractError(name, "config round-trips", f"{what} is "
                                f"{getattr(family, what)(config)!r} before and "
                                f"{getattr(family, what)(back)!r} after the round trip")


def _check_fp32(name: str, contract: str, model: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise ContractError(name, contract, f"got {type(model).__name__}, not a torch.nn.Module")
    wrong = sorted({str(p.dtype) for p in model.parameters()
                    if p.is_floating_point() and p.dtype != torch.float32})
    if wrong:
        raise ContractError(name, contract, f"parameters in {', '.join(wrong)}")


def _check_sizes(name: str, family: ModelFamily, config: Any, model: torch.nn.Module,
                 processor: Any) -> None:
    contract = "vocab_size and max_length consistent"
    vocab, length = family.vocab_size(config), family.max_length(config)
    if vocab is not None and hasattr(processor, "__len__") and len(processor) > vocab:
        raise ContractError(name, contract, f"vocab_size {vocab} after fit_config, but the "
                            f"processor has {len(processor)} entries")
    embeddings = getattr(model, "get_input_embeddings", None)
    if vocab is not None and callable(embeddings) and embeddings() is not None:
        rows = embeddings().weight.shape[0]
        if rows != vocab:
            raise ContractError(name, contract, f"vocab_size {vocab}, but the model has {rows} "
                                "input embedding rows")
    if length is not None and (not isinstance(length, int) or length <= 0):
        raise ContractError(name, contract, f"max_length is {length!r}")
    try:
        family.check(model, processor, length or 1, "check_model_family")
    except MoxinError as error:
        raise ContractError(name, contract, f"check refuses the family's own model with "
                            f"seq_len {length or 1}: {error}") from error


def _check_same_weights(name: str, model: torch.nn.Module, loaded: torch.nn.Module) -> None:
    built, back = model.state_dict(), loaded.state_dict()
    if set(built) != set(back):
        missing, extra = sorted(set(built) - set(back)), sorted(set(back) - set(built))
        raise ContractError(name, "save/load keeps the weights", f"the reloaded model lacks "
                            f"{missing[:3]} and has {extra[:3]} besides")
    for key, tensor in built.items():
        if back[key].shape != tensor.shape or not torch.equal(back[key].to(tensor.dtype), tensor):
            raise ContractError(name, "save/load keeps the weights", f"{key} differs after save "
                                "and load")


def _random_ids(vocab: int | None) -> dict[str, torch.Tensor]:
    if vocab is None:
        raise ValueError("check_model_family: the family gives no vocab_size; pass `inputs`, "
                         "the keyword arguments of the model's forward.")
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, vocab, (2, 8), generator=generator)}


def _logits(output: Any) -> torch.Tensor:
    """The first tensor of a forward's output (``logits`` of a transformers output)."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    values = output.values() if isinstance(output, dict) else output
    return next(v for v in values if isinstance(v, torch.Tensor))


def _behaviour(processor: Any) -> dict[str, Any]:
    """What a processor does, for comparing a reloaded one with the original."""
    from moxin_core.testing.vision_encoders import sample_pictures

    seen: dict[str, Any] = {"type": type(processor).__name__}
    if hasattr(processor, "__len__"):
        seen["len"] = len(processor)
    for label, part in (("", processor), ("tokenizer.", getattr(processor, "tokenizer", None))):
        if callable(getattr(part, "encode", None)):
            seen[label + "encode"] = list(part.encode(PROBE_TEXT))
        if hasattr(part, "chat_template"):
            seen[label + "chat_template"] = part.chat_template
    transform = getattr(processor, "transform", None)
    if callable(transform):
        seen["transform"] = transform(sample_pictures()[0]).tolist()
    return seen


def _check_processor(name: str, family: ModelFamily, processor: Any, tmp_path: Path,
                     source: str | Path | None) -> None:
    contract = "processor round-trips"
    family.save_processor(processor, tmp_path / "processor", source)
    loaded = family.load_processor(tmp_path / "processor")
    before, after = _behaviour(processor), _behaviour(loaded)
    if before != after:
        differ = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise ContractError(name, contract, f"the reloaded processor differs in "
                            f"{', '.join(differ)}")
    family.save_processor(loaded, tmp_path / "processor-again", tmp_path / "processor")
    first, second = file_digests(tmp_path / "processor"), file_digests(tmp_path / "processor-again")
    if first != second:
        differ = sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))
        raise ContractError(name, contract, f"saving the reloaded processor writes other files: "
                            f"{', '.join(differ)}")


def _check_meta_init(name: str, family: ModelFamily, config: Any,
                     model: torch.nn.Module) -> None:
    contract = "meta init"
    with torch.device("meta"):
        meta = family.build(config)
    meta.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*meta.parameters(), *meta.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
            elif tensor.dtype in (torch.int32, torch.int64):
                tensor.fill_(SENTINEL)
    try:
        family.init_weights(meta)
    except MoxinError:
        return  # the family does not support sharding (the ModelFamily default)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    meta_shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    if shapes != meta_shapes:
        differ = sorted(k for k in set(shapes) | set(meta_shapes)
                        if shapes.get(k) != meta_shapes.get(k))
        raise ContractError(name, contract, f"the model built on the meta device has other "
                            f"tensors than build's: {differ[:3]}")
    unset = [key for key, tensor in [*meta.named_parameters(), *meta.named_buffers()]
             if (tensor.is_floating_point() and not torch.isfinite(tensor).all())
             or (tensor.dtype in (torch.int32, torch.int64) and (tensor == SENTINEL).any())]
    if unset:
        raise ContractError(name, contract, f"init_weights left {len(unset)} tensor(s) unset "
                            f"after to_empty, e.g. {', '.join(unset[:3])}")
