"""Tokenise-and-pack into fixed-length blocks, and the example-builder contract.

Pretraining documents are laid end to end as ``[BOS] tokens [EOS]`` and cut into blocks of exactly
``seq_len`` tokens: no padding, no token lost or repeated. Position ids restart at every document
start (and at every block start, since a block cannot attend to the previous one), so attention can
be limited to one document by kernels that read packed position ids (transformers' masking does
so for sdpa, eager and flash attention when no attention mask is passed).

TRL's ``pack_dataset`` does the same cut on an in-memory ``datasets.Dataset``; moxin packs a stream
instead, because exact resume needs the packer's carry-over tokens in the checkpoint
(``moxin_core.data.stream``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import torch


def pack_documents(documents: Iterable[list[int]], seq_len: int, bos_id: int,
                   eos_id: int) -> Iterator[list[int]]:
    """Yield blocks of ``seq_len`` ids from documents laid out as ``[bos] doc [eos]``.

    The final partial block is dropped; ``DocumentPacker`` exposes it as ``buffer``.
    """
    packer = DocumentPacker(seq_len, bos_id, eos_id)
    for ids in documents:
        yield from packer.add(ids)


class DocumentPacker:
    """Stateful packer: ``add(ids)`` returns the blocks completed by one more document."""

    def __init__(self, seq_len: int, bos_id: int, eos_id: int) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        self.seq_len, self.bos_id, self.eos_id = seq_len, bos_id, eos_id
        self.buffer: list[int] = []
        self.tokens_in = 0
        self.tokens_out = 0

    def add(self, ids: list[int]) -> list[list[int]]:
        self.buffer.append(self.bos_id)
        self.buffer.extend(ids)
        self.buffer.append(self.eos_id)
        self.tokens_in += len(ids) + 2
        blocks = []
        while len(self.buffer) >= self.seq_len:
            blocks.append(self.buffer[: self.seq_len])
            del self.buffer[: self.seq_len]
        self.tokens_out += len(blocks) * self.seq_len
        return blocks

    @property
    def efficiency(self) -> float:
        """Share of tokenised tokens that landed in blocks (1.0 = nothing wasted)."""
        return self.tokens_out / self.tokens_in if self.tokens_in else 1.0

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer),
                "stats": {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out}}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = list(state["buffer"])
        self.tokens_in, self.tokens_out = state["stats"]["tokens_in"], state["stats"]["tokens_out"]


def document_position_ids(input_ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Position ids ``(batch, seq)`` that restart at 0 at each BOS and at each row start."""
    batch, seq = input_ids.shape
    index = torch.arange(seq, device=input_ids.device).expand(batch, seq)
    starts = torch.where(input_ids == bos_id, index, torch.zeros_like(index))
    last_start = torch.cummax(starts, dim=1).values
    return index - last_start


class ExampleBuilder(Protocol):
    """Turns records into training examples; its state is part of the stream position.

    ``state_dict()`` may hold ``"stats"``: ``{name: count}`` of what it did (conversations,
    truncated, skipped, tokens in and out of packed blocks); ``moxin train`` prints them and
    stores them in the manifest.
    """

    def feed(self, record: dict) -> list[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
