"""Per-GPU memory of one training step: weights, gradients, optimizer state, activations, logits.

Everything here is arithmetic on a model's shape and a stage's settings; ``docs/memory.md``
derives each term, and ``tests/test_plan.py`` checks the totals against the peak measured on a
real training step (``moxin_core.testing.memory``). The step is modelled in two moments, the
larger of which is the peak:

* **start of the backward pass**: every activation the forward pass saved is alive, and the
  loss's backward holds its largest ``tokens x vocabulary`` tensors (:data:`LOGIT_BYTES`);
  gradients are alive only if an earlier micro-batch of the same step left them
  (``grad_accum > 1``);
* **end of the backward pass / optimizer step**: every gradient is alive, the activations are
  gone but for the first decoder layer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from moxin_core.errors import MoxinError

GIB = 2 ** 30
#: peft keeps LoRA adapters in fp32 whatever the base model's dtype: weight, gradient, AdamW state
ADAPTER_BYTES = (4, 4, 8)
#: the modules LoRA adapts in every decoder layer (peft's "all-linear" on a Mistral model)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: attention kernels that take grouped-query k/v as they are; the others (SDPA given a mask,
#: eager) get k and v repeated to every query head first, and keep those copies for backward
NATIVE_GQA = ("flex_attention", "flash_attention_2")
#: bytes per logit (token x vocabulary entry) at the peak, by how the objective reads the logits
#: and the bytes of the logits themselves. ``cross-entropy`` (lm, sft: transformers' loss on
#: logits upcast to fp32): the log-softmax the forward pass saves, its gradient from nll_loss and
#: the gradient of the logits, all fp32. ``log-probs`` (DPO, GRPO: ``selective_log_softmax``):
#: fp32 logits are kept whole (logsumexp's input) and their gradient is summed row by row into
#: a full-size buffer (4 copies); 16-bit logits are upcast a row at a time, so the saved fp32
#: log-softmax plus a 16-bit gradient buffer and the row being added (measured: 7 bytes).
LOGIT_BYTES = {("cross-entropy", 4): 12, ("cross-entropy", 2): 12,
               ("log-probs", 4): 16, ("log-probs", 2): 8}


@dataclass(frozen=True)
class Precision:
    """How a Lightning precision setting stores and computes (bytes per element)."""

    name: str
    weight: int  # a stored weight, its gradient; AdamW keeps two states of this size
    activation: int  # what a matrix multiplication returns
    residual: int  # the residual stream between decoder layers (embedding output dtype)
    autocast: bool  # matmuls cast their fp32 weights to 16 bits, and keep the copy for backward

    @property
    def kind(self) -> str:
        """``fp32``, ``mixed`` or ``half``: which table of saved activations applies."""
        return "mixed" if self.autocast else ("fp32" if self.weight == 4 else "half")


PRECISIONS = {
    "32-true": Precision("32-true", 4, 4, 4, False),
    "32": Precision("32-true", 4, 4, 4, False),
    "bf16-mixed": Precision("bf16-mixed", 4, 2, 4, True),
    "16-mixed": Precision("16-mixed", 4, 2, 4, True),
    "bf16-true": Precision("bf16-true", 2, 2, 2, False),
}


def precision(name: str) -> Precision:
    """The :class:`Precision` of a stage's ``precision`` setting."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise MoxinError(f"precision {name!r} cannot be planned; known: "
                         f"{', '.join(PRECISIONS)}.") from None


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer (Mistral/Llama-shaped: RMSNorm, grouped-query
    attention, SwiGLU MLP, no biases) that set its memory."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config: Any, where: str = "the model") -> ModelShape:
        """The shape of a transformers config (or its ``to_dict()``); MoxinError naming the
        missing fields when it is not a decoder-only transformer's."""
        def get(name: str, default: Any = None) -> Any:
            value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
            return default if value is None else value

        needed = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "vocab_size")
        missing = [name for name in needed if get(name) is None]
        if missing:
            raise MoxinError(f"{where} has no {', '.join(missing)} in its config: the planner "
                             "knows decoder-only transformers (Mistral/Llama-shaped configs).")
        heads = int(get("num_attention_heads"))
        return cls(hidden=int(get("hidden_size")), layers=int(get("num_hidden_layers")),
                   heads=heads, kv_heads=int(get("num_key_value_heads", heads)),
                   head_dim=int(get("head_dim", get("hidden_size") // heads)),
                   intermediate=int(get("intermediate_size")), vocab=int(get("vocab_size")),
                   tied_embeddings=bool(get("tie_word_embeddings", False)))

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_linear_params(self) -> int:
        """q, k, v, o and the gate/up/down projections of one decoder layer."""
        h = self.hidden
        return 2 * h * self.q_width + 2 * h * self.kv_width + 3 * h * self.intermediate

    @property
    def layer_params(self) -> int:
        return self.layer_linear_params + 2 * self.hidden  # and two RMSNorm weights

    @property
    def root_params(self) -> int:
        """Outside the decoder layers: embedding, output head (unless tied), final norm."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_params + self.root_params

    @property
    def linear_params(self) -> int:
        """Weights that pass through a linear layer (cast per matmul under mixed precision)."""
        return self.layers * self.layer_linear_params + self.vocab * self.hidden

    def lora_params(self, rank: int) -> int:
        """Adapter weights of rank ``rank`` on every projection (``A: r x in``, ``B: out x r``)."""
        h, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        in_plus_out = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return self.layers * rank * in_plus_out


# What autograd keeps per token of one decoder layer, as multiples of the widths h (hidden), q
# (query heads x head dim), kv (k/v width as the attention kernel keeps it), i (MLP width) and r
# (LoRA rank), in bytes; plus 4 bytes per head (the attention's fp32 log-sum-exp) and 8 (the two
# RMSNorm 1/rms factors). Read off the saved tensors of transformers' MistralDecoderLayer
# (docs/memory.md lists them one by one) and checked against measured peaks.
_LAYER_TERMS: dict[tuple[str, bool], dict[str, int]] = {
    # x, x/rms, norm out (4h each, twice: before attention and before the MLP); q, k, v and the
    # attention output; gate, silu(gate), up and their product (4 bytes each)
    ("fp32", False): {"h": 24, "q": 8, "kv": 8, "i": 16},
    # fp32 x and x/rms (twice); a bf16 cast of the norm output per projection that reads it
    # (3 + 2); bf16 q, k, v, attention output, and the four MLP tensors
    ("mixed", False): {"h": 26, "q": 4, "kv": 4, "i": 8},
    # the fp32 upcast of x inside RMSNorm, bf16 x/rms and norm output (twice); the rest bf16
    ("half", False): {"h": 16, "q": 4, "kv": 4, "i": 8},
    # LoRA: frozen norms keep no x/rms; the frozen base matmuls keep no input, each adapter's A
    # keeps its input (shared in fp32) and its r-wide output
    ("fp32", True): {"h": 16, "q": 8, "kv": 8, "i": 16, "r": 28},
    # ... each adapter keeps its own bf16 cast of its input; peft casts the bf16 attention
    # output and MLP product to fp32 for the fp32 adapter, and autocast back: a second copy
    ("mixed", True): {"h": 18, "q": 6, "kv": 4, "i": 8, "r": 14},
    # ... every adapter input is cast to fp32 (the adapters stay fp32 in a bf16 model)
    ("half", True): {"h": 28, "q": 8, "kv": 4, "i": 10, "r": 28},
}


@dataclass(frozen=True)
class StepSetup:
    """One training step on one GPU, as a stage runs it.

    ``micro_batch`` counts examples; an objective may run several sequences per example
    (``rows_per_example``: DPO's chosen and rejected, GRPO's completions) of at most ``seq_len``
    tokens each. ``attention`` is the kernel that runs on the GPU. ``logits_chunk`` > 0: the
    objective computes the logits that many tokens at a time. ``reference_models``: frozen
    full-size copies run beside the policy (a DPO/GRPO reference; none under LoRA).
    ``logits_path``: ``cross-entropy`` or ``log-probs`` (see :data:`LOGIT_BYTES`).
    """

    precision: str
    seq_len: int
    micro_batch: int = 1
    grad_accum: int = 1
    rows_per_example: int = 1
    attention: str = "flex_attention"
    logits_chunk: int = 0
    reference_models: int = 0
    logits_path: str = "cross-entropy"

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.rows_per_example * self.seq_len


@dataclass(frozen=True)
class Strategy:
    """How the step is distributed over ``gpus`` GPUs.

    ``ddp``: every GPU holds everything (moxin's DDP keeps gradients in its all-reduce buckets,
    no second buffer);
    ``fsdp``: FSDP2 shards weights, gradients and optimizer state over the GPUs; ``lora``:
    every GPU holds the frozen base and trains adapters of rank ``lora_rank`` (DDP over them).
    """

    kind: str
    gpus: int = 1
    activation_checkpointing: bool = False
    lora_rank: int = 16

    @property
    def label(self) -> str:
        name = {"ddp": "DDP", "fsdp": "FSDP", "lora": f"LoRA r={self.lora_rank}"}[self.kind]
        return name + (" + checkpointing" if self.activation_checkpointing else "")


@dataclass
class MemoryEstimate:
    """Bytes per GPU at the step's peak, by what holds them; ``moment`` says which moment of
    the step the peak is (see the module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    moment: str
    details: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    def sizes(self, unit: int = 1) -> dict[str, float]:
        """Each part and the peak in ``unit`` bytes (``GIB``: GiB, rounded to 3 decimals)."""
        parts = ("weights", "gradients", "optimizer", "activations", "logits", "peak")
        if unit == 1:
            return {name: getattr(self, name) for name in parts}
        return {name: round(getattr(self, name) / unit, 3) for name in parts}

    def gib(self) -> dict[str, float]:
        return self.sizes(GIB)


def layer_activation_bytes(shape: ModelShape, setup: StepSetup, lora_rank: int = 0) -> int:
    """Bytes one decoder layer keeps for its backward pass over the step's tokens."""
    p = precision(setup.precision)
    widths = {"h": shape.hidden, "q": shape.q_width, "i": shape.intermediate, "r": lora_rank,
              "kv": shape.kv_width if setup.attention in NATIVE_GQA else shape.q_width}
    terms = _LAYER_TERMS[(p.kind, lora_rank > 0)]
    per_token = sum(coefficient * widths[name] for name, coefficient in terms.items())
    per_token += 4 * shape.heads + 8
    if setup.attention not in NATIVE_GQA:
        # the boolean document mask becomes an additive mask of the activation dtype, which the
        # kernel keeps: seq_len values per token per layer
        per_token += setup.seq_len * p.activation
    if setup.attention == "eager":  # the softmax probabilities, in fp32 and as cast
        per_token += shape.heads * setup.seq_len * (4 + (p.activation if p.activation != 4 else 0))
    return per_token * setup.tokens


def activation_bytes(shape: ModelShape, setup: StepSetup, lora_rank: int = 0,
                     checkpointing: bool = False) -> int:
    """What the forward pass leaves for the backward pass, logits aside: every decoder layer's
    saved tensors (with activation checkpointing only each layer's input), the final norm's,
    and what all layers share (rotary cos/sin, the mask, the batch)."""
    p = precision(setup.precision)
    t, h = setup.tokens, shape.hidden
    if checkpointing:
        layers = shape.layers * p.residual * h * t
    else:
        layers = shape.layers * layer_activation_bytes(shape, setup, lora_rank)
    chunked = setup.logits_chunk > 0
    if lora_rank:  # frozen norm weight and head: only the norm's (upcast) input
        final = 4 * h + (p.residual * h if chunked else 0)
    elif p.kind == "half":  # fp32 upcast, bf16 x/rms, bf16 norm output
        final = 8 * h
    else:  # x, x/rms, and the norm output (fp32 when chunked, else as the head's matmul reads it)
        final = 8 * h + (4 * h if chunked else p.activation * h)
    shared = 2 * shape.head_dim * p.residual + 24  # cos, sin; input ids, labels, positions
    if setup.attention not in NATIVE_GQA:
        shared += setup.seq_len  # the boolean mask built once per batch
    return layers + (final + shared) * t


def logits_bytes(shape: ModelShape, setup: StepSetup, lora_rank: int = 0) -> int:
    """The loss's peak over the vocabulary (at the start of the backward pass).

    Whole logits: :data:`LOGIT_BYTES` per token and vocabulary entry. With ``logits_chunk`` (the
    lm and sft objectives' option; cross-entropy): the same for one chunk, plus the output
    head's weight gradient that the chunks accumulate (the autograd engine adds each chunk's
    into a buffer out of place: up to three at once), plus the gradient of the hidden states.
    """
    p = precision(setup.precision)
    t, v, h = setup.tokens, shape.vocab, shape.hidden
    try:
        per_logit = LOGIT_BYTES[(setup.logits_path, p.activation)]
    except KeyError:
        raise MoxinError(f"logits_path must be cross-entropy or log-probs, got "
                         f"{setup.logits_path!r}.") from None
    if not setup.logits_chunk:
        return per_logit * t * v
    chunk = per_logit * min(setup.logits_chunk, t) * v
    head_gradient = 0 if lora_rank else p.weight * v * h
    return max(chunk + head_gradient, 3 * head_gradient) + p.residual * h * t


def estimate_memory(shape: ModelShape, setup: StepSetup, strategy: Strategy) -> MemoryEstimate:
    """Bytes per GPU at the peak of one training step of ``setup`` under ``strategy``."""
    p = precision(setup.precision)
    lora = strategy.lora_rank if strategy.kind == "lora" else 0
    shard = strategy.gpus if strategy.kind == "fsdp" else 1
    ac = strategy.activation_checkpointing
    if strategy.kind == "fsdp" and setup.logits_chunk:
        # the chunked loss refuses a sharded model (moxin_core.objectives.lm)
        setup = replace(setup, logits_chunk=0)

    if lora:
        adapters = shape.lora_params(lora)
        stored = shape.parameters * p.weight + adapters * ADAPTER_BYTES[0]
        gradients = adapters * ADAPTER_BYTES[1]
        optimizer = adapters * ADAPTER_BYTES[2]
        references = 0  # the reference is the model with its adapters switched off
    else:
        adapters = 0
        stored = math.ceil(shape.parameters / shard) * p.weight
        gradients = math.ceil(shape.parameters / shard) * p.weight
        optimizer = math.ceil(shape.parameters / shard) * 2 * p.weight
        references = setup.reference_models * math.ceil(shape.parameters / shard) * p.weight
    # (no DDP bucket buffer: moxin's DDP keeps the gradients in its all-reduce buckets,
    # gradient_as_bucket_view; torch's default would copy them into a second buffer)
    # FSDP2 gathers the root's weights (embedding, head) for the whole step, and a layer's
    # while it runs plus the next one prefetched
    gathered = (p.weight * (shape.root_params + 2 * shape.layer_params)
                if strategy.kind == "fsdp" and shard > 1 else 0)
    # under autocast, each matmul's 16-bit copy of its weight is saved for the backward pass
    # (whole model; with checkpointing only the head's, outside the checkpointed layers)
    cast = 0
    if p.autocast:
        cast_params = (shape.vocab * shape.hidden if ac
                       else shape.linear_params + adapters)
        cast = 2 * cast_params

    activations = activation_bytes(shape, setup, lora, ac)
    logits = logits_bytes(shape, setup, lora)
    held = gradients if setup.grad_accum > 1 else 0
    start = MemoryEstimate(stored + references + gathered + cast, held, optimizer,
                           activations, logits, "start of backward",
                           {"stored weights": stored, "reference models": references,
                            "FSDP gathered weights": gathered, "autocast weight copies": cast})
    end = MemoryEstimate(stored + references + gathered, gradients, optimizer,
                         layer_activation_bytes(shape, setup, lora), 0, "end of backward",
                         {"stored weights": stored, "reference models": references,
                          "FSDP gathered weights": gathered})
    return start if start.peak >= end.peak else end
