"""Causal language modelling on packed documents (pretraining)."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from moxin_core.data.packing import DocumentPacker, document_position_ids
from moxin_core.data.sources import ORIGIN, select_text
from moxin_core.errors import MoxinError
from moxin_core.objectives.base import Objective

IGNORE_INDEX = -100


class TextPacker:
    """Records -> ``[BOS] tokens [EOS]`` documents -> blocks of ``seq_len`` (an ExampleBuilder)."""

    def __init__(self, tokenizer: Any, seq_len: int, text_field: str) -> None:
        self.tokenizer, self.text_field = tokenizer, text_field
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise MoxinError("The tokenizer has no BOS or EOS token; packing needs both.")
        self.packer = DocumentPacker(seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)

    def text_of(self, record: dict) -> str:
        text = select_text(record, self.text_field)["text"]
        if not isinstance(text, str):
            raise MoxinError(f"{record.get(ORIGIN, 'a record')}: field {self.text_field!r} is "
                             f"{type(text).__name__}, expected a string.")
        return text

    def feed(self, record: dict) -> list[dict]:
        # split_special_tokens: a literal "<s>" in web text is text, not a control token
        ids = self.tokenizer(self.text_of(record), add_special_tokens=False,
                             split_special_tokens=True)["input_ids"]
        return [{"input_ids": block} for block in self.packer.add(ids)]

    def state_dict(self) -> dict:
        return self.packer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.packer.load_state_dict(state)


class CausalLM(Objective):
    """Next-token cross-entropy, mean over the predicted tokens of the micro-batch on all ranks.

    Blocks are fully packed, so every micro-batch holds the same number of predicted tokens (less
    the BOS positions, which carry no label) and the mean weighs tokens almost equally across
    accumulation steps. On several ranks each rank divides its summed loss by the token count of
    the whole global micro-batch (one all-reduce of a scalar), times the world size that DDP/FSDP
    average over: the gradient is that of the mean over every rank's tokens, exactly what one
    rank with the whole global micro-batch computes.

    ``logits_chunk`` (tokens, 0 = off) computes the output projection and the cross-entropy
    ``logits_chunk`` tokens at a time, recomputing each chunk's logits in the backward pass, so
    the full ``tokens x vocabulary`` logits (and their fp32 copy) are never held at once: at a
    micro-batch of 8 x 2048 tokens and a 32 k vocabulary those are 2 GB in bf16 plus 4 GB in fp32.
    The loss and gradients equal the unchunked ones up to float summation order. On a CUDA GPU
    with liger-kernel installed its fused linear + cross-entropy kernel does the same (its own
    chunking) instead.
    """

    name = "lm"

    def __init__(self, text_field: str = "text", logits_chunk: int = 0) -> None:
        self.text_field = text_field
        self.logits_chunk = check_logits_chunk("lm", logits_chunk)
        self.bos_id: int | None = None

    def example_builder(self, tokenizer: Any, seq_len: int) -> TextPacker:
        self.bos_id = tokenizer.bos_token_id
        return TextPacker(tokenizer, seq_len, self.text_field)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)
        labels = input_ids.clone()
        labels[input_ids == self.bos_id] = IGNORE_INDEX  # a document start is not predictable
        return {"input_ids": input_ids, "labels": labels,
                "position_ids": document_position_ids(input_ids, self.bos_id)}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"]
        extra = {}
        if self.context is not None and self.context.world_size > 1:
            count = (labels[:, 1:] != IGNORE_INDEX).sum()
            # transformers divides the summed cross-entropy by num_items_in_batch
            extra["num_items_in_batch"] = (self.context.all_reduce_sum(count)
                                           / self.context.world_size)
        if self.logits_chunk:
            return chunked_causal_lm_loss(model, batch["input_ids"], batch["position_ids"],
                                          labels, self.logits_chunk,
                                          extra.get("num_items_in_batch")), {}
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                    labels=labels, use_cache=False, **extra)
        return out.loss, {}


def check_logits_chunk(objective: str, value: Any) -> int:
    """``value`` as an objective's ``logits_chunk`` option (tokens per chunk, 0 = off)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MoxinError(f"{objective}: logits_chunk must be a whole number of tokens >= 0 (0: "
                         f"the whole micro-batch at once), got {value!r}.")
    return value


def _chunk_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight).float()  # as transformers' loss upcasts
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX,
                                             reduction="sum")


def _liger_linear_cross_entropy(device: torch.device) -> Any:
    """liger-kernel's fused linear + cross-entropy (summed, ``IGNORE_INDEX`` ignored) when it is
    installed and the model is on a CUDA GPU (its Triton kernels need one); else None, and the
    chunked implementation below runs."""
    if device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return None
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("liger-kernel")) < Version("0.5.0"):  # earlier ones always averaged
        return None
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor,
                           position_ids: torch.Tensor | None, labels: torch.Tensor, chunk: int,
                           num_items: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of a transformers causal LM, ``chunk`` tokens of logits at a
    time: what ``model(..., labels=labels).loss`` returns (mean over the labelled tokens, or the
    sum over ``num_items``), without holding the whole logits tensor."""
    from torch.utils.checkpoint import checkpoint

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    config = getattr(model, "config", None)
    scaled = any(getattr(config, name, None) not in (None, 1, 1.0) for name in
                 ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if head is None or getattr(head, "bias", None) is not None or scaled:
        raise MoxinError(f"logits_chunk needs a plain output projection (no bias, scaling or "
                         f"soft-capping of the logits); {type(model).__name__} has another "
                         "(set logits_chunk to 0).")
    if type(head.weight).__name__ == "DTensor":
        # the decoder is called directly, which skips the sharded root's forward hooks
        raise MoxinError("logits_chunk does not work with a sharded model (strategy fsdp) yet; "
                         "set logits_chunk to 0 there.")
    hidden = decoder(input_ids=input_ids, position_ids=position_ids,
                     use_cache=False).last_hidden_state
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    hidden, shifted = hidden.reshape(-1, hidden.shape[-1]), shifted.reshape(-1).to(hidden.device)
    fused = _liger_linear_cross_entropy(hidden.device)
    if fused is not None:  # liger-kernel's fused kernel: the same sum, chunked on the GPU
        total = fused(head.weight, hidden, shifted).float()
        count = num_items if num_items is not None else (shifted != IGNORE_INDEX).sum()
        return total / count
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        piece = slice(start, start + chunk)  # (a chunk with no label adds 0: no host sync)
        total = total + checkpoint(_chunk_cross_entropy, hidden[piece], head.weight,
                                   shifted[piece], use_reentrant=False)
    count = num_items if num_items is not None else (shifted != IGNORE_INDEX).sum()
    return total / count
