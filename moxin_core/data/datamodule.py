"""The LightningDataModule built from data-source names: sharded by rank and worker, resumable."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from moxin_core import distributed
from moxin_core.data.sources import ORIGIN, DataSource, Mixture, WeightedSource
from moxin_core.data.stream import (MAX_EMPTY_RECORDS, BatchStream, Layout, _as_is,
                                    no_example_error)
from moxin_core.errors import MoxinError
from moxin_core.variants import DataSpec

if TYPE_CHECKING:  # objectives build on the data layer, not the other way round
    from moxin_core.objectives.base import Objective


def build_source(registry: Any, spec: DataSpec) -> DataSource:
    """Instantiate one data source from its registry name and options (clear errors)."""
    factory = registry.get("data_sources", spec.source)
    try:
        return factory(**spec.options)
    except TypeError as exc:
        raise MoxinError(f"Data source {spec.source!r}: bad options {sorted(spec.options)} "
                         f"({exc}).") from None


def build_mixture(registry: Any, specs: Sequence[DataSpec], seed: int) -> Mixture:
    return Mixture([WeightedSource(build_source(registry, s), s.weight) for s in specs], seed=seed)


class MoxinDataModule(pl.LightningDataModule):
    """Streams micro-batches from weighted data sources through an objective.

    The stream is sharded by rank and data-loader worker (``moxin_core.data.stream``). The
    position saved in checkpoints is that of the last batch *handed to a training step*, not of
    what the loader fetched ahead, for every rank; a resumed run (same world size, workers and
    micro-batch size) continues with exactly the batches an uninterrupted run would have seen.

    Args:
        mixture: the weighted sources (``build_mixture``).
        objective: turns records into examples and examples into batches.
        processor: the model's processor (a tokenizer for causal LMs).
        seq_len: tokens per example.
        micro_batch_size: examples per batch and rank.
        sharding: ``"examples"`` (the global batch does not depend on the world size) or
            ``"records"`` (each rank reads only its part of every source).
        workers: data-loader worker processes (0: batches are built in the training process).
        validate_records: records per source read up-front so bad data fails before training.
    """

    def __init__(self, mixture: Mixture, objective: Objective, processor: Any, seq_len: int,
                 micro_batch_size: int, sharding: str = "examples", workers: int = 0,
                 validate_records: int = 64) -> None:
        super().__init__()
        self.mixture, self.objective, self.processor = mixture, objective, processor
        #: tokens of the batch last handed to the trainer (None: not counted yet, or counted
        #: after the loss); MoxinModule takes it (and clears it) in its training step
        self.batch_tokens: int | None = None
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        self.sharding, self.workers = sharding, workers
        self.validate_records = validate_records
        Layout(sharding=sharding)  # a bad mode fails here
        # logical stream -> its state after its last trained batch (restored on resume)
        self._states: dict[int, dict] = {}
        self._next = 0  # the logical stream of the next batch

    # -- layout
    def layout(self) -> Layout:
        """This process's rank and world size (from the trainer it is attached to, if any)."""
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return Layout(rank, world, max(self.workers, 1), self.sharding)

    def check_data(self) -> None:
        """Read the first records of every source through the example builder (fail early)."""
        builder = self.objective.example_builder(self.processor, self.seq_len)
        for item in self.mixture.sources:
            count, blank, first, examples = 0, 0, None, 0
            done = False
            while not done:  # a short source is read again, as training would
                before = count
                for record, _ in item.source.iter_from(None):
                    examples += len(builder.feed(record))
                    count += 1
                    first = first or record.get(ORIGIN)
                    # "text" is the core's name for a record's text (select_text): an objective
                    # that reads text has set it by now
                    text = record.get("text")
                    blank += isinstance(text, str) and not text.strip()
                    # past the first records, read on only until one gives an example (a
                    # packing builder needs several short records for its first block)
                    done = count >= self.validate_records and (
                        examples > 0 or count >= MAX_EMPTY_RECORDS)
                    if done:
                        break
                done = done or count == before or blank == count
            if count == 0:
                raise MoxinError(f"Data source {item.source.describe()} is empty: it yielded no "
                                 "record. Check its files or options.")
            if blank == count:
                raise MoxinError(f"Data source {item.source.describe()}: the 'text' of every "
                                 f"record read ({count}, from {first or 'its start'}) is empty "
                                 "or blank, so there is nothing to train on. Check the files, or "
                                 "name the field that holds the text with the source's "
                                 "`text_field` option.")
            if not examples and count >= MAX_EMPTY_RECORDS:
                raise no_example_error(count, f"Data source {item.source.describe()}", builder,
                                       self.seq_len)

    def _stream(self, start: dict[int, dict] | None = None, first: int = 0) -> BatchStream:
        return BatchStream(self.mixture,
                           lambda: self.objective.example_builder(self.processor, self.seq_len),
                           self.objective.collate, self.micro_batch_size, self.layout(),
                           start, first, repeats=int(getattr(self.objective, "batch_repeats", 1)))

    def train_dataloader(self) -> DataLoader:
        # continues after the last trained batch: the start, or the checkpoint's position
        return DataLoader(self._stream(dict(self._states), self._next), batch_size=None,
                          collate_fn=_as_is, num_workers=self.workers, persistent_workers=False)

    def iter_batches(self) -> Iterator[dict]:
        """This rank's batches from the start of the stage, in training order, built in this
        process (for look-aheads such as precomputing reference log-probabilities)."""
        for item in self._stream().in_loader_order():
            yield item["batch"]

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Called for the batch about to be trained on, after any fetch-ahead.
        if "stream" not in batch:
            return batch  # not from this module's loader
        self._states[batch["stream"]] = batch["state"]
        self._next = (batch["stream"] + 1) % max(self.workers, 1)
        if not getattr(self.objective, "tokens_after_loss", False):
            # counted here, on the CPU: on a GPU, counting the moved batch would wait for it
            self.batch_tokens = self.objective.num_tokens(batch["batch"])
        return batch["batch"]

    # -- checkpoints
    def _local_state(self) -> dict[str, Any]:
        layout = self.layout()
        return {"streams": dict(self._states), "next": self._next,
                "world_size": layout.world_size, "workers": layout.workers,
                "sharding": self.sharding, "micro_batch_size": self.micro_batch_size}

    def state_dict(self) -> dict[str, Any]:
        return distributed.per_rank(self._local_state())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = distributed.this_rank(state_dict)
        layout = self.layout()
        saved = (state.get("world_size"), state.get("workers"), state.get("sharding"),
                 state.get("micro_batch_size"))
        if saved != (layout.world_size, layout.workers, self.sharding, self.micro_batch_size):
            raise MoxinError(
                "Cannot resume the data stream exactly: the checkpoint was written with world "
                f"size {saved[0]}, {saved[1]} data stream(s) per rank, sharding {saved[2]!r} and "
                f"micro-batch size {saved[3]}; this run has {layout.world_size}, "
                f"{layout.workers}, {self.sharding!r} and {self.micro_batch_size}. Resume with "
                "the original settings.")
        self._states, self._next = dict(state["streams"]), state["next"]

    # -- statistics
    def stats(self) -> dict[str, int] | None:
        """The example builders' counters over every rank and worker (collective)."""
        states = [s for local in distributed.gather_objects(self._local_state())
                  for s in local["streams"].values()
                  if isinstance(s.get("builder"), dict) and "stats" in s["builder"]]
        if not states:
            return None
        if self.sharding == "examples":
            # every process built the whole stream: the one furthest along counts everything
            return dict(max(states, key=lambda s: s["chunk"])["builder"]["stats"])
        total: dict[str, int] = {}
        for stats in (s["builder"]["stats"] for s in states):
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
        return total
