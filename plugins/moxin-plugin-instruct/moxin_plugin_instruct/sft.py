"""Supervised fine-tuning on conversations: loss on assistant replies only.

**Examples.** Each record's ``messages`` are rendered with the chat template (``chat.render``);
labels are the assistant replies including their closing ``<|endoftext|>``. With ``pack=True``
(default) whole conversations are laid end to end into blocks of at most ``seq_len`` tokens; a
conversation never spans two blocks, and because every conversation starts with BOS the position
ids restart at each one, so transformers' attention (sdpa, eager, flash) keeps each conversation to
itself: no attention or position leaks between packed conversations. The block tail is padding
without labels.

**Over-long conversations** (``overlong``): ``"truncate"`` (default, as open-instruct does) keeps
the first ``seq_len`` tokens, and drops the conversation if no assistant token survives;
``"drop"`` drops every conversation longer than ``seq_len``. Both are counted in ``stats``
(``truncated``, ``dropped_overlong``), which ``moxin train`` prints and stores in the manifest.

**Loss reduction** (``reduction``):

* ``"sum"`` (Tulu 3's ``reduce_loss: sum``, the default): the micro-batch loss is the *sum* of the
  token cross-entropies. Lightning divides each micro-batch loss by ``grad_accum`` and DDP/FSDP
  average gradients over devices, so an optimizer step follows
  ``sum over every assistant token of the global batch / (grad_accum * devices)``: the divisor is a
  constant, so every token weighs the same whatever the batch composition (long and short replies,
  full or nearly empty micro-batches). The logged ``train/loss`` is that sum; ``train/token_loss``
  is the mean per token for reading.
* ``"mean"``: the mean over the assistant tokens of the micro-batch on all ranks (one all-reduce
  of the token count; on one rank transformers' default); a token in a micro-batch with few
  assistant tokens weighs more than one in a full micro-batch.
"""

from __future__ import annotations

from typing import Any

import torch

from moxin_core.api import (IGNORE_INDEX, MoxinError, Objective, check_logits_chunk,
                            chunked_causal_lm_loss, document_position_ids)

from moxin_plugin_instruct.chat import check_conversation, origin_of, pad_token_id, render

OVERLONG = ("truncate", "drop")
REDUCTIONS = ("sum", "mean")


class ConversationBuilder:
    """Records -> labelled (and optionally packed) examples; an ``ExampleBuilder``."""

    def __init__(self, tokenizer: Any, seq_len: int, messages_field: str = "messages",
                 pack: bool = True, overlong: str = "truncate") -> None:
        if overlong not in OVERLONG:
            raise MoxinError(f"sft: overlong must be one of {', '.join(OVERLONG)}, got {overlong!r}.")
        if tokenizer.bos_token_id is None:
            raise MoxinError("sft: the tokenizer has no BOS token; packing needs it to separate "
                             "conversations.")
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.messages_field, self.pack, self.overlong = messages_field, pack, overlong
        self.block_ids: list[int] = []
        self.block_labels: list[int] = []
        self.stats = {"conversations": 0, "truncated": 0, "dropped_overlong": 0,
                      "assistant_tokens": 0}

    def encode(self, record: dict) -> tuple[list[int], list[int]] | None:
        """Ids and labels of one record (``None`` when it is dropped, and counted)."""
        where = origin_of(record)
        if self.messages_field not in record:
            fields = ", ".join(k for k in record if not k.startswith("__")) or "(none)"
            raise MoxinError(f"{where}: no field {self.messages_field!r} (fields present: "
                             f"{fields}); set the sft objective's `messages_field` option.")
        messages = check_conversation(record[self.messages_field], where)
        ids, mask = render(self.tokenizer, messages)
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        self.stats["conversations"] += 1
        if len(ids) > self.seq_len:
            if self.overlong == "drop":
                self.stats["dropped_overlong"] += 1
                return None
            ids, labels = ids[: self.seq_len], labels[: self.seq_len]
            if all(label == IGNORE_INDEX for label in labels):
                self.stats["dropped_overlong"] += 1  # the prompt alone fills seq_len
                return None
            self.stats["truncated"] += 1
        self.stats["assistant_tokens"] += sum(label != IGNORE_INDEX for label in labels)
        return ids, labels

    def feed(self, record: dict) -> list[dict]:
        encoded = self.encode(record)
        if encoded is None:
            return []
        ids, labels = encoded
        if not self.pack:
            return [{"input_ids": ids, "labels": labels}]
        out = []
        if len(self.block_ids) + len(ids) > self.seq_len:
            out.append({"input_ids": self.block_ids, "labels": self.block_labels})
            self.block_ids, self.block_labels = [], []
        self.block_ids.extend(ids)  # a fresh list after every emitted block
        self.block_labels.extend(labels)
        return out

    def state_dict(self) -> dict:
        return {"block_ids": list(self.block_ids), "block_labels": list(self.block_labels),
                "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.block_ids, self.block_labels = list(state["block_ids"]), list(state["block_labels"])
        self.stats = dict(state["stats"])


def pad_examples(examples: list[dict], pad_id: int, bos_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids``/``labels`` to the longest example; position ids restart per BOS."""
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
    return {"input_ids": input_ids, "labels": labels,
            "position_ids": document_position_ids(input_ids, bos_id),
            "lengths": torch.tensor([len(e["input_ids"]) for e in examples])}


class SFT(Objective):
    """Assistant-only next-token cross-entropy (see the module docstring for the options).

    Args:
        reduction: ``"sum"`` (Tulu 3) or ``"mean"`` over the micro-batch's assistant tokens.
        pack: pack conversations into ``seq_len`` blocks (``False``: one per example).
        overlong: ``"truncate"`` or ``"drop"`` conversations longer than ``seq_len``.
        messages_field: the record field holding the conversation.
        logits_chunk: compute the output projection and cross-entropy this many tokens at a
            time (0: the whole micro-batch), so the full logits are never held
            (:func:`moxin_core.api.chunked_causal_lm_loss`).
    """

    name = "sft"

    def __init__(self, reduction: str = "sum", pack: bool = True, overlong: str = "truncate",
                 messages_field: str = "messages", logits_chunk: int = 0) -> None:
        if reduction not in REDUCTIONS:
            raise MoxinError(f"sft: reduction must be one of {', '.join(REDUCTIONS)}, "
                             f"got {reduction!r}.")
        if overlong not in OVERLONG:
            raise MoxinError(f"sft: overlong must be one of {', '.join(OVERLONG)}, got {overlong!r}.")
        self.reduction, self.pack, self.overlong = reduction, pack, overlong
        self.logits_chunk = check_logits_chunk("sft", logits_chunk)
        self.messages_field = messages_field
        self.pad_id = self.bos_id = 0
        # a summed loss grows with the batch's tokens: moxin train reports it per token too
        self.token_loss_metric = "token_loss" if reduction == "sum" else None

    def example_builder(self, tokenizer: Any, seq_len: int) -> ConversationBuilder:
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = pad_token_id(tokenizer)
        return ConversationBuilder(tokenizer, seq_len, self.messages_field, self.pack,
                                   self.overlong)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_examples(examples, self.pad_id, self.bos_id)
        # checked here, on the CPU (in the loss it would wait for the device at every step)
        if not bool((batch["labels"][:, 1:] != IGNORE_INDEX).any()):
            raise MoxinError("sft: a micro-batch without assistant tokens was built; this is a "
                             "bug in the example builder (please report it).")
        return batch

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["lengths"].sum())  # padding is not counted

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"]
        count = (labels[:, 1:] != IGNORE_INDEX).sum()  # never 0: collate checked
        # transformers divides the summed cross-entropy by num_items_in_batch when it is given;
        # for "mean" across ranks: each rank divides by the global count over the world size
        # (DDP/FSDP average the gradients), the gradient of the mean over every rank's tokens
        if self.reduction == "sum":
            divisor = torch.ones((), device=labels.device)
        elif self.context is not None and self.context.world_size > 1:
            divisor = self.context.all_reduce_sum(count) / self.context.world_size
        else:
            divisor = count
        if self.logits_chunk:  # the output projection a chunk of tokens at a time
            loss = chunked_causal_lm_loss(model, batch["input_ids"], batch["position_ids"],
                                          labels, self.logits_chunk, divisor)
        else:
            loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         labels=labels, num_items_in_batch=divisor, use_cache=False).loss
        token_loss = loss.detach() / (count if self.reduction == "sum" else 1)
        return loss, {"token_loss": token_loss, "assistant_tokens": count.float()}
