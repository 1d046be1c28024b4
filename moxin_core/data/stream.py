"""Micro-batches for one rank, sharded by rank and data-loader worker, resumable after any batch.

**The example stream.** Records come from a ``Mixture`` of weighted sources; the objective's
example builder turns them into examples (tokenise and pack, render a conversation, ...); every
``micro_batch_size`` consecutive examples form a *chunk*, numbered 0, 1, 2, ...

**Sharding** (``sharding``):

* ``"examples"`` (default): every process builds the same example stream and keeps its own chunks:
  chunk ``c`` goes to rank ``c % world_size``, and within a rank to logical stream
  ``(c // world_size) % workers``. Step ``s`` of a run on ``W`` ranks trains on chunks
  ``s*W .. s*W + W-1``: the global batch is the same whatever the world size (a run on 2 ranks
  with micro-batch ``b`` sees exactly the examples of a run on 1 rank with micro-batch ``2b``).
  The cost: every process tokenises every record.
* ``"records"``: each data source is split (``DataSource.shard``) into ``world_size * workers``
  disjoint parts (``datasets.distributed.split_dataset_by_node`` for ``hf_dataset``), and each
  process reads, tokenises and packs only its part. Nothing is done twice, but which examples
  share a global batch depends on the world size.

Either way every example is trained on once per pass across all ranks and workers.

**Resume.** Each yielded item carries the state of its logical stream right after that batch
(mixture position and RNG, builder state, examples built but not yet batched, chunk counter).
With ``workers`` data-loader processes the loader takes batches from workers in turn; the data
module records the state of the logical stream of every batch *handed to a training step* and
which logical stream comes next, and a resumed loader gives worker ``w`` logical stream
``(next + w) % workers``, so batches continue in exactly the uninterrupted order.

**Repeats.** With ``repeats = k > 1`` (an objective's ``batch_repeats``) each batch is yielded
``k`` times in a row; the state of every repeat but the last is the position *before* the batch
plus the number of repeats done, so a resumed stream rebuilds the batch and yields its remaining
repeats.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from moxin_core.data.sources import Mixture
from moxin_core.errors import MoxinError

SHARDING = ("examples", "records")

#: records in a row that may give no training example before the stream stops with an error (an
#: objective's builder skips records that do not fit seq_len; a stream of only such records
#: would otherwise search for a batch forever)
MAX_EMPTY_RECORDS = 20_000


def no_example_error(read: int, where: str, builder: Any,
                     seq_len: int | None = None) -> MoxinError:
    """The error for ``read`` records in a row of which the builder made no example."""
    stats = {}
    try:
        stats = dict((builder.state_dict() or {}).get("stats") or {})
    except Exception:  # noqa: BLE001 - a builder without stats: the message goes without them
        pass
    shown = f" (the builder's counts: {stats})" if stats else ""
    limit = f" at seq_len {seq_len}" if seq_len else ""
    return MoxinError(f"{where}: {read:,} records in a row gave no training example{limit}"
                      f"{shown}. The records are probably longer than the sequence length "
                      "allows (prompts and answers are skipped, not cut); raise seq_len, or "
                      "shorten or filter the records.")


@dataclass(frozen=True)
class Layout:
    """Where this process's batches come from: rank, world size, workers and sharding mode."""

    rank: int = 0
    world_size: int = 1
    workers: int = 1
    sharding: str = "examples"

    def __post_init__(self) -> None:
        if self.sharding not in SHARDING:
            raise MoxinError(f"data sharding must be one of {', '.join(SHARDING)}, "
                             f"got {self.sharding!r}.")
        if not 0 <= self.rank < self.world_size or self.workers < 1:
            raise ValueError(f"bad layout {self}")

    def owns(self, chunk: int, stream: int) -> bool:
        """Whether logical stream ``stream`` of this rank trains on ``chunk``."""
        if self.sharding == "records":
            return True  # the sources are split instead
        return (chunk % self.world_size == self.rank
                and (chunk // self.world_size) % self.workers == stream)


def _as_is(item: Any) -> Any:
    """The DataLoader's collate function: items are whole batches already."""
    return item


class BatchStream(IterableDataset):
    """This rank's micro-batches (see the module docstring).

    Args:
        mixture: the weighted sources (unsharded; ``records`` sharding splits them per stream).
        make_builder: returns a fresh example builder (``objective.example_builder(...)``).
        collate: examples -> a batch of tensors.
        micro_batch_size: examples per batch.
        layout: rank, world size, workers and sharding.
        start: ``{logical stream: state}`` to resume from, and ``next``: the logical stream the
            first loader worker serves.
        repeats: times each batch is yielded in a row.
    """

    def __init__(self, mixture: Mixture, make_builder: Callable[[], Any],
                 collate: Callable[[list[dict]], dict], micro_batch_size: int,
                 layout: Layout = Layout(), start: dict[int, dict] | None = None,
                 first: int = 0, repeats: int = 1) -> None:
        super().__init__()
        if repeats < 1:
            raise MoxinError(f"batch repeats must be at least 1, got {repeats}.")
        self.repeats = repeats
        self.mixture, self.make_builder, self.collate = mixture, make_builder, collate
        self.micro_batch_size, self.layout = micro_batch_size, layout
        self.start, self.first = dict(start or {}), first

    def logical_stream(self) -> int:
        """The logical stream this process serves (worker ``w`` serves ``(first + w) % K``)."""
        info = get_worker_info()
        worker = info.id if info is not None else 0
        return (self.first + worker) % self.layout.workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if get_worker_info() is None and self.layout.workers > 1:
            yield from self.in_loader_order()
        else:
            yield from self.iter_stream(self.logical_stream())

    def in_loader_order(self) -> Iterator[dict[str, Any]]:
        """All logical streams of this rank, in the order a data loader with ``workers``
        processes delivers them (in this process: for a look-ahead such as DPO's precompute)."""
        streams = [self.iter_stream((self.first + w) % self.layout.workers)
                   for w in range(self.layout.workers)]
        while True:
            for stream in streams:
                yield next(stream)

    def _mixture_for(self, stream: int) -> Mixture:
        layout = self.layout
        if layout.sharding == "examples":
            return Mixture(self.mixture.sources, seed=self.mixture.seed)
        part, parts = layout.rank * layout.workers + stream, layout.world_size * layout.workers
        return self.mixture.sharded(part, parts)

    def iter_stream(self, stream: int) -> Iterator[dict[str, Any]]:
        """Batches of one logical stream: ``{"batch", "stream", "state"}``."""
        mixture, builder = self._mixture_for(stream), self.make_builder()
        pending: list[dict] = []
        chunk = 0
        state = self.start.get(stream)
        done = 0  # repeats of the first batch already trained on
        if state is not None and "repeat" in state:
            done, state = state["repeat"], state["before"]
        if state is not None:
            mixture.load_state_dict(state["mixture"])
            builder.load_state_dict(state["builder"])
            pending, chunk = copy.deepcopy(state["pending"]), state["chunk"]

        def position() -> dict:
            # One record can complete several examples (a long document fills many blocks): the
            # ones not yet batched are part of the position.
            return {"mixture": mixture.state_dict(), "builder": builder.state_dict(),
                    "pending": copy.deepcopy(pending), "chunk": chunk}

        before = position() if self.repeats > 1 else None
        records = iter(mixture)  # endless: sources restart when they run out
        while True:
            examples = []
            while len(examples) < self.micro_batch_size:
                empty = 0
                while not pending:
                    pending.extend(builder.feed(next(records)))
                    empty += 1
                    if empty >= MAX_EMPTY_RECORDS and not pending:
                        raise no_example_error(empty, "The training data", builder)
                examples.append(pending.pop(0))
            current, chunk = chunk, chunk + 1
            if not self.layout.owns(current, stream):
                continue
            after = position()
            batch = self.collate(examples)
            for repeat in range(done, self.repeats):
                last = repeat == self.repeats - 1
                yield {"batch": batch, "stream": stream,
                       "state": after if last else {"before": before, "repeat": repeat + 1}}
            done, before = 0, after
