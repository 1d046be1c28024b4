"""Causal language modelling on packed documents (pretraining)."""

from __future__ import annotations

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
    """

    name = "lm"

    def __init__(self, text_field: str = "text") -> None:
        self.text_field = text_field
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
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                    labels=labels, use_cache=False, **extra)
        return out.loss, {}
