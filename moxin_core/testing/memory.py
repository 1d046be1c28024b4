"""Measure the tensor memory of a training step, to check ``moxin plan``'s formulas against.

:class:`LiveTensorBytes` is a ``TorchDispatchMode`` that counts the bytes of every tensor storage
alive on one device: the storages of the tensors it is given (weights, optimizer state, the
batch) and every storage an operator returns inside it, each until it is freed (a weak-reference
finalizer on the storage). Its ``peak`` is the largest count seen after any operator, the figure
``torch.cuda.max_memory_allocated`` gives on a GPU less the allocator's rounding and the
temporaries a kernel frees before it returns. Unlike process RSS it is exact and repeatable, and
it works on the CPU. (``torch.distributed._tools.mem_tracker.MemTracker`` counts the same way, but
cannot track a model with frozen parameters, such as a LoRA model.)

:func:`measure_training_step` runs one optimizer step as moxin's loop does (micro-batches of
forward under autocast for mixed precision, backward, gradient clipping, ``AdamW.step``,
``zero_grad(set_to_none=True)``), with the optimizer state in place as after a first step, and
returns the peak.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages on ``device`` (see the module docstring).

    Use it as a context manager; call :meth:`track` first for tensors that exist already.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.current = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # id(storage) -> bytes counted

    def track(self, *objects: Any) -> LiveTensorBytes:
        """Count the storages of existing tensors: tensors, modules (parameters, gradients and
        buffers), optimizers (their state) or containers of these."""
        for item in objects:
            for tensor in _tensors_of(item):
                self._count(tensor)
        self.peak = max(self.peak, self.current)
        return self

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._count(leaf)
        self.peak = max(self.peak, self.current)
        return out

    def _count(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.device or tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        key, size = id(storage), storage.nbytes()
        if key in self._sizes:  # a view of a counted storage, or one resized in place
            self.current += size - self._sizes[key]
            self._sizes[key] = size
            return
        self._sizes[key] = size
        self.current += size
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._sizes.pop(key, 0)


def _tensors_of(item: Any) -> Iterable[torch.Tensor]:
    if isinstance(item, torch.Tensor):
        yield item
    elif isinstance(item, torch.nn.Module):
        for param in item.parameters():
            yield param
            if param.grad is not None:
                yield param.grad
        yield from item.buffers()
    elif isinstance(item, torch.optim.Optimizer):
        for state in item.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    elif isinstance(item, dict):
        for value in item.values():
            yield from _tensors_of(value)
    elif isinstance(item, (list, tuple)):
        for value in item:
            yield from _tensors_of(value)


@dataclass
class StepMemory:
    """What :func:`measure_training_step` measured, in bytes."""

    #: the largest amount of tensor memory alive at once during the step
    peak: int
    #: alive before the step: weights, optimizer state (from the untracked first step), batches
    before: int


def measure_training_step(model: torch.nn.Module, loss: Callable[[torch.nn.Module, Any],
                                                                 torch.Tensor],
                          batches: Sequence[Any], optimizer: torch.optim.Optimizer,
                          precision: str = "32-true", grad_clip: float = 1.0,
                          also_track: Sequence[Any] = ()) -> StepMemory:
    """The peak tensor memory of one optimizer step over ``batches`` (one per micro-batch).

    ``loss(model, batch)`` returns the scalar loss of one micro-batch (divided by the number of
    micro-batches here, as Lightning does under gradient accumulation). ``precision``
    ``bf16-mixed`` runs the forward pass under ``torch.autocast(..., torch.bfloat16,
    cache_enabled=False)`` as Lightning's precision plugin does; ``bf16-true`` expects a model
    already in bf16. The step runs twice: untracked, so AdamW's state exists as in every later
    step, then tracked.
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        for batch in batches:
            autocast = (torch.autocast(device.type, torch.bfloat16, cache_enabled=False)
                        if precision == "bf16-mixed" else contextlib.nullcontext())
            with autocast:
                value = loss(model, batch) / len(batches)
            value.backward()
            del value
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for param in params:  # AdamW's state, as every step after the first has it
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tracker = LiveTensorBytes(device).track(model, optimizer, list(batches), list(also_track))
    before = tracker.current
    with tracker:
        step()
    return StepMemory(peak=tracker.peak, before=before)


def lora_model(model: torch.nn.Module, rank: int = 16) -> torch.nn.Module:
    """``model`` with peft LoRA adapters of rank ``rank`` (alpha ``2 * rank``, no dropout) on
    every projection of every decoder layer, the rest frozen: the LoRA ``moxin plan`` plans."""
    from peft import LoraConfig, get_peft_model

    from moxin_core.planning import LORA_TARGETS

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none",
                        target_modules=list(LORA_TARGETS))
    return get_peft_model(model, config)


def packed_lm_batch(objective: Any, vocab: int, micro_batch: int, seq_len: int,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch of the ``lm`` objective: ``micro_batch`` rows of ``seq_len`` random tokens, two
    packed documents per row (so the attention gets a document mask, as in pretraining)."""
    rows = torch.randint(3, vocab, (micro_batch, seq_len), generator=generator)
    rows[:, 0] = rows[:, seq_len // 2] = objective.bos_id
    return objective.collate([{"input_ids": row.tolist()} for row in rows])


def measure_causal_lm_step(config: Any, precision: str = "32-true", seq_len: int = 256,
                           micro_batch: int = 2, grad_accum: int = 1,
                           checkpointing: bool = False, lora_rank: int = 0,
                           logits_chunk: int = 0, attention: str = "sdpa",
                           seed: int = 0) -> StepMemory:
    """The measured peak of one step of the ``lm`` objective on a causal LM built from
    ``config`` (a ``transformers`` Mistral/Llama config) as ``moxin train`` builds and sets it
    up: the ``causal-lm`` family's fp32 model (cast to bf16 for ``bf16-true``), the attention
    kernel, activation checkpointing per decoder layer, LoRA adapters of rank ``lora_rank``."""
    from moxin_core.models.causal_lm import CausalLMFamily
    from moxin_core.objectives.lm import CausalLM

    torch.manual_seed(seed)
    model = CausalLMFamily().build(config)
    model.set_attn_implementation(attention)
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_rank:
        model = lora_model(model, lora_rank)
    model.train()
    objective = CausalLM(logits_chunk=logits_chunk)
    objective.bos_id = config.bos_token_id
    generator = torch.Generator().manual_seed(seed)
    batches = [packed_lm_batch(objective, config.vocab_size, micro_batch, seq_len, generator)
               for _ in range(grad_accum)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return measure_training_step(model, lambda m, batch: objective.loss(m, batch)[0], batches,
                                 optimizer, precision)


#: the training steps ``tests/test_plan.py`` and ``benchmarks/memory_plan.py`` measure and plan:
#: :func:`measure_causal_lm_step` settings on :func:`check_config` (2 x 256 tokens unless set)
CHECKED_STEPS: dict[str, dict[str, Any]] = {
    "32-true": {},
    "32-true, checkpointing": {"checkpointing": True},
    "bf16-mixed": {"precision": "bf16-mixed"},
    "bf16-mixed, checkpointing": {"precision": "bf16-mixed", "checkpointing": True},
    "bf16-mixed, 2 micro-batches": {"precision": "bf16-mixed", "grad_accum": 2},
    "bf16-true": {"precision": "bf16-true"},
    "32-true, logits_chunk 128": {"logits_chunk": 128},
    "bf16-mixed, eager attention": {"precision": "bf16-mixed", "attention": "eager"},
    "32-true, LoRA": {"lora_rank": 16},
    "bf16-mixed, LoRA": {"precision": "bf16-mixed", "lora_rank": 16},
    "bf16-mixed, LoRA, checkpointing": {"precision": "bf16-mixed", "lora_rank": 16,
                                        "checkpointing": True},
}


def check_config(hidden: int = 256, layers: int = 4, heads: int = 8, vocab: int = 32000) -> Any:
    """A Moxin-shaped Mistral config small enough to train a step on the CPU in seconds, with
    the full 32 k vocabulary so that the logits weigh as much as they do at scale (hidden 256,
    4 layers: 19.8 M parameters)."""
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 7 // 2,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads // 4, head_dim=hidden // heads,
                         max_position_embeddings=4096, sliding_window=None,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def planned_step(config: Any, precision: str = "32-true", seq_len: int = 256,
                 micro_batch: int = 2, grad_accum: int = 1, checkpointing: bool = False,
                 lora_rank: int = 0, logits_chunk: int = 0, attention: str = "sdpa") -> Any:
    """What ``moxin plan``'s formulas give (a ``MemoryEstimate``) for the step
    :func:`measure_causal_lm_step` runs with the same settings (one device: no DDP buckets)."""
    from moxin_core.planning import ModelShape, StepSetup, Strategy, estimate_memory

    setup = StepSetup(precision, seq_len, micro_batch, grad_accum, attention=attention,
                      logits_chunk=logits_chunk)
    strategy = Strategy("lora" if lora_rank else "ddp", 1, checkpointing, lora_rank or 16)
    return estimate_memory(ModelShape.from_config(config), setup, strategy)
