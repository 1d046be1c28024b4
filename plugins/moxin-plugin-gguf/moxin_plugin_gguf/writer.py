"""Write an HF ``MistralForCausalLM`` folder as a GGUF file of llama.cpp's ``llama`` architecture.

Mistral and Llama differ only in the sliding-window attention, which llama.cpp's ``llama``
architecture does not implement: the GGUF model gives the HF model's outputs for sequences up to
``sliding_window`` tokens (4096 for Moxin-7B) and full causal attention beyond.

Tensors are streamed: the header and tensor table are written from the safetensors headers (shapes
are known without reading data), then each tensor is read with ``safe_open``, converted and
appended, so at most one tensor (plus its converted copy) is in memory at a time.

Tensor layout facts (llama.cpp's ``llama`` names):

======================================  ==========================  =========================
HF name                                  GGUF name                   shape (rows, cols)
======================================  ==========================  =========================
model.embed_tokens.weight                token_embd.weight           (n_vocab, hidden)
model.layers.N.self_attn.q_proj.weight   blk.N.attn_q.weight         (n_head*head_dim, hidden)
model.layers.N.self_attn.k_proj.weight   blk.N.attn_k.weight         (n_kv*head_dim, hidden)
model.layers.N.self_attn.v_proj.weight   blk.N.attn_v.weight         (n_kv*head_dim, hidden)
model.layers.N.self_attn.o_proj.weight   blk.N.attn_output.weight    (hidden, n_head*head_dim)
model.layers.N.mlp.gate/up_proj.weight   blk.N.ffn_gate/up.weight    (ffn, hidden)
model.layers.N.mlp.down_proj.weight      blk.N.ffn_down.weight       (hidden, ffn)
model.layers.N.input_layernorm.weight    blk.N.attn_norm.weight      (hidden,)
model.layers.N.post_attention_layernorm  blk.N.ffn_norm.weight       (hidden,)
model.norm.weight                        output_norm.weight          (hidden,)
lm_head.weight                           output.weight               (n_vocab, hidden)
======================================  ==========================  =========================

GGUF stores shapes innermost-first; gguf-py takes numpy order and reverses it, so numpy order is
used throughout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moxin_core.api import MoxinError
from moxin_plugin_gguf.vocab import Vocabulary, load_vocabulary

ARCH = "llama"
SUPPORTED_ARCHITECTURES = ("MistralForCausalLM",)
#: output types gguf-py writes directly
DIRECT_OUTTYPES = ("f32", "f16", "bf16", "q8_0")

_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class Hyperparameters:
    """The ``MistralConfig`` fields the ``llama`` GGUF needs (from ``config.json``)."""

    name: str
    context_length: int
    hidden: int
    n_layers: int
    ffn: int
    n_head: int
    n_kv: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    config_vocab: int

    @classmethod
    def from_folder(cls, folder: Path) -> Hyperparameters:
        """Read ``folder/config.json``; MoxinError for anything but ``MistralForCausalLM``."""
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        architectures = config.get("architectures") or []
        if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
            raise MoxinError(
                f"{config_file}: architecture {architectures or config.get('model_type')!r} is not "
                f"supported by the GGUF exporter; it writes {', '.join(SUPPORTED_ARCHITECTURES)} "
                f"models as llama.cpp's '{ARCH}' architecture.")
        n_head = config["num_attention_heads"]
        hidden = config["hidden_size"]
        # transformers 5 moved rope_theta into rope_parameters
        rope = config.get("rope_parameters") or {}
        rope_theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
            raise MoxinError(f"{config_file}: RoPE scaling {rope or config.get('rope_scaling')} "
                             "is not supported by the GGUF exporter (plain RoPE only).")
        return cls(
            # a stage folder's export is STAGE/hf: the stage name says more than "hf"
            name=config.get("_name_or_path") or (folder.parent.name if folder.name == "hf"
                                                 else folder.name),
            context_length=config["max_position_embeddings"], hidden=hidden,
            n_layers=config["num_hidden_layers"], ffn=config["intermediate_size"],
            n_head=n_head, n_kv=config.get("num_key_value_heads") or n_head,
            head_dim=config.get("head_dim") or hidden // n_head,
            rope_theta=float(rope_theta), rms_eps=float(config["rms_norm_eps"]),
            config_vocab=config["vocab_size"])


class SafetensorsCheckpoint:
    """The tensors of an HF folder (one ``model.safetensors`` or an index of shards), by name."""

    def __init__(self, folder: Path) -> None:
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {name: folder / file for name, file in weight_map.items()}
        elif (folder / "model.safetensors").exists():
            from safetensors import safe_open

            single = folder / "model.safetensors"
            with safe_open(single, framework="pt") as handle:
                self.files = {name: single for name in handle.keys()}
        else:
            raise MoxinError(f"{folder} has no model.safetensors (nor an index of shards); "
                             "save the model with safe_serialization=True.")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` from the safetensors headers, without reading any data."""
        from safetensors import safe_open

        shapes: dict[str, tuple[int, ...]] = {}
        for file in sorted(set(self.files.values())):
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        return shapes

    def load(self, name: str) -> np.ndarray:
        """One tensor as float32 numpy (bf16 has no numpy dtype, hence torch in between)."""
        from safetensors import safe_open

        with safe_open(self.files[name], framework="pt") as handle:
            return handle.get_tensor(name).float().numpy()


def permute_for_llama_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a Q or K projection from HF's RoPE layout to llama.cpp's.

    HF rotates the two *halves* of each head (``rotate_half``); llama.cpp's ``llama`` RoPE rotates
    *adjacent pairs*. Within each head, row ``i`` of the first half and row ``i`` of the second
    half form rotation pair ``i``; llama.cpp wants them at rows ``2i`` and ``2i+1``.

    weight: (n_head * head_dim, cols) -> same shape.
    """
    rows = weight.shape[0]
    head_dim = rows // n_head
    return (weight.reshape(n_head, 2, head_dim // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name for an HF tensor name; None for tensors llama.cpp does not use."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    match = _LAYER_RE.fullmatch(hf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"blk.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    if hf_name.endswith("rotary_emb.inv_freq"):  # recomputed by llama.cpp from rope_freq_base
        return None
    raise MoxinError(f"Tensor {hf_name!r} has no llama.cpp 'llama' counterpart; the GGUF exporter "
                     "handles plain MistralForCausalLM checkpoints only.")


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: where it comes from, its shape (numpy order) and its stored type."""

    hf_name: str
    name: str
    shape: tuple[int, ...]
    qtype: object  # gguf.GGMLQuantizationType
    transform: Callable[[np.ndarray], np.ndarray] | None

    @property
    def nbytes(self) -> int:
        from gguf import quant_shape_to_byte_shape

        return int(np.prod(quant_shape_to_byte_shape(self.shape, self.qtype)))


def storage_type(outtype: str, shape: tuple[int, ...]):
    """The GGML type of a tensor for ``outtype``; 1-D tensors (norms) always stay f32.

    Why: norm weights are tiny and llama.cpp's kernels expect them in f32; q8_0 also needs rows
    that are a multiple of its 32-wide block, so such rows fall back to f16.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    if len(shape) == 1:
        return Q.F32
    qtype = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
    if shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        return Q.F16
    return qtype


def plan_tensors(checkpoint: SafetensorsCheckpoint, hp: Hyperparameters,
                 outtype: str) -> list[TensorPlan]:
    """The output tensors in file order (embeddings, blocks, output norm, output)."""
    plans = []
    for hf_name, shape in checkpoint.shapes().items():
        name = gguf_name(hf_name)
        if name is None:
            continue
        transform = None
        if name.endswith("attn_q.weight"):
            transform = lambda w: permute_for_llama_rope(w, hp.n_head)  # noqa: E731
        elif name.endswith("attn_k.weight"):
            transform = lambda w: permute_for_llama_rope(w, hp.n_kv)  # noqa: E731
        plans.append(TensorPlan(hf_name, name, shape, storage_type(outtype, shape), transform))

    def order(plan: TensorPlan) -> tuple[int, int, str]:
        match = re.fullmatch(r"blk\.(\d+)\..+", plan.name)
        if match:
            return (1, int(match.group(1)), plan.name)
        return ({"token_embd.weight": 0, "output_norm.weight": 2}.get(plan.name, 3), 0, plan.name)

    plans.sort(key=order)
    names = {p.name for p in plans}
    missing = [n for n in ("token_embd.weight", "output_norm.weight") if n not in names]
    if missing:
        raise MoxinError(f"The checkpoint lacks {missing}: not a complete MistralForCausalLM.")
    return plans


def _file_type(outtype: str) -> int:
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16,
            "q8_0": F.MOSTLY_Q8_0}[outtype]


def _add_metadata(writer, hp: Hyperparameters, vocab: Vocabulary, n_rows: int,
                  outtype: str) -> None:
    from gguf import GGML_QUANT_VERSION

    writer.add_name(hp.name)
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden)
    writer.add_block_count(hp.n_layers)
    writer.add_feed_forward_length(hp.ffn)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_kv)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(n_rows)
    writer.add_file_type(_file_type(outtype))
    writer.add_quantization_version(GGML_QUANT_VERSION)

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _converted(checkpoint: SafetensorsCheckpoint, plans: list[TensorPlan]) -> Iterator[np.ndarray]:
    from gguf import GGMLQuantizationType as Q, quantize

    for plan in plans:
        weight = checkpoint.load(plan.hf_name)
        if plan.transform is not None:
            weight = plan.transform(weight)
        if plan.qtype == Q.F32:
            data = np.ascontiguousarray(weight, dtype=np.float32)
        elif plan.qtype == Q.F16:
            data = np.ascontiguousarray(weight, dtype=np.float16)
        else:  # bf16 and q8_0 come back from gguf-py as raw bytes (uint8)
            data = quantize(np.ascontiguousarray(weight), plan.qtype)
        if data.nbytes != plan.nbytes:
            raise AssertionError(f"{plan.name}: {data.nbytes} bytes, planned {plan.nbytes}")
        yield data


def write_gguf(folder: Path, path: Path, outtype: str) -> dict[str, int]:
    """Write the HF model in ``folder`` to ``path`` with ``outtype`` in ``DIRECT_OUTTYPES``.

    Returns ``{"n_rows": embedding rows, "n_padded": <pad_N> tokens added, "n_params": ...}``.
    """
    import gguf

    if outtype not in DIRECT_OUTTYPES:
        raise MoxinError(f"write_gguf writes {DIRECT_OUTTYPES}, not {outtype!r}.")
    hp = Hyperparameters.from_folder(folder)
    checkpoint = SafetensorsCheckpoint(folder)
    plans = plan_tensors(checkpoint, hp, outtype)
    n_rows = next(p.shape[0] for p in plans if p.name == "token_embd.weight")
    vocab = load_vocabulary(folder, n_rows)

    writer = gguf.GGUFWriter(path, ARCH)
    try:
        _add_metadata(writer, hp, vocab, n_rows, outtype)
        for plan in plans:
            writer.add_tensor_info(plan.name, plan.shape, np.dtype(np.float32), plan.nbytes,
                                   raw_dtype=plan.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in _converted(checkpoint, plans):
            writer.write_tensor_data(data)
    finally:
        writer.close()
    return {"n_rows": n_rows, "n_padded": vocab.n_padded,
            "n_params": int(sum(np.prod(p.shape) for p in plans))}
