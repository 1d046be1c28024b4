"""Tokenise-and-pack into fixed-length blocks, and a resumable stream of examples.

Pretraining documents are laid end to end as ``[BOS] tokens [EOS]`` and cut into blocks of exactly
``seq_len`` tokens: no padding, no token lost or repeated. Position ids restart at every document
start (and at every block start, since a block cannot attend to the previous one), so attention can
be limited to one document by kernels that read packed position ids (transformers' masking does
so for sdpa, eager and flash attention when no attention mask is passed).

TRL's ``pack_dataset`` does the same cut on an in-memory ``datasets.Dataset``; moxin packs a stream
instead, because exact resume needs the packer's carry-over tokens in the checkpoint.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import IterableDataset

from moxin_core.data.sources import Mixture


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
        return {"buffer": list(self.buffer), "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = list(state["buffer"])
        self.tokens_in, self.tokens_out = state["tokens_in"], state["tokens_out"]


def document_position_ids(input_ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Position ids ``(batch, seq)`` that restart at 0 at each BOS and at each row start."""
    batch, seq = input_ids.shape
    index = torch.arange(seq, device=input_ids.device).expand(batch, seq)
    starts = torch.where(input_ids == bos_id, index, torch.zeros_like(index))
    last_start = torch.cummax(starts, dim=1).values
    return index - last_start


class ExampleBuilder(Protocol):
    """Turns records into training examples; its state is part of the stream position."""

    def feed(self, record: dict) -> list[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class ResumableStream(IterableDataset):
    """Examples built from a ``Mixture``, resumable after any example.

    After each example the stream snapshots the mixture and builder state; ``state_after(i)`` gives
    the snapshot taken after example ``i`` (the last one trained on), which ``load_state_dict``
    turns back into a stream that continues with example ``i + 1``. Snapshots are kept for the
    last ``keep`` examples (the ones a data loader may have fetched ahead of training).
    """

    def __init__(self, mixture: Mixture, builder: ExampleBuilder, keep: int = 4096) -> None:
        super().__init__()
        self.mixture, self.builder, self.keep = mixture, builder, keep
        self._snapshots: OrderedDict[int, dict] = OrderedDict()
        self._start: dict | None = None

    def load_state_dict(self, state: dict) -> None:
        self._start = copy.deepcopy(state)

    def state_after(self, index: int) -> dict:
        if index not in self._snapshots:
            raise KeyError(f"no snapshot for example {index}")
        return self._snapshots[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index, pending = 0, []
        if self._start is not None:
            self.mixture.load_state_dict(self._start["mixture"])
            self.builder.load_state_dict(self._start["builder"])
            index, pending = self._start["next_index"], copy.deepcopy(self._start["pending"])
        records = iter(self.mixture)  # endless: sources restart when they run out
        while True:
            while not pending:
                pending.extend(self.builder.feed(next(records)))
            example = pending.pop(0)
            # One record can complete several examples (a long document fills many blocks); the
            # ones not yet yielded are part of the position.
            self._snapshots[index] = {
                "mixture": self.mixture.state_dict(),
                "builder": self.builder.state_dict(),
                "pending": copy.deepcopy(pending),
                "next_index": index + 1,
            }
            while len(self._snapshots) > self.keep:
                self._snapshots.popitem(last=False)
            yield {**example, "example_index": index}
            index += 1
