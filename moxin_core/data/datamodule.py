"""The LightningDataModule built from data-source names, with exact mid-epoch resume."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from moxin_core.data.packing import ResumableStream
from moxin_core.data.sources import DataSource, Mixture, WeightedSource
from moxin_core.errors import MoxinError
from moxin_core.objectives.base import Objective
from moxin_core.variants import DataSpec


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
    """Streams examples from weighted data sources through an objective's example builder.

    The position in the stream is part of every checkpoint: ``state_dict()`` returns the stream
    state right after the last example handed to a training step (not the ones the loader fetched
    ahead), so a resumed run sees exactly the examples an uninterrupted run would have seen.

    Args:
        mixture: the weighted sources (``build_mixture``).
        objective: turns records into examples and examples into batches.
        tokenizer: a transformers tokenizer.
        seq_len: tokens per example.
        micro_batch_size: examples per batch.
        validate_records: records per source read up-front so bad data fails before training.
    """

    def __init__(self, mixture: Mixture, objective: Objective, tokenizer: Any, seq_len: int,
                 micro_batch_size: int, validate_records: int = 64) -> None:
        super().__init__()
        self.mixture, self.objective, self.tokenizer = mixture, objective, tokenizer
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        self.validate_records = validate_records
        self.stream: ResumableStream | None = None
        self._last_index: int | None = None
        self._resume_state: dict | None = None

    def check_data(self) -> None:
        """Read the first records of every source through the example builder (fail early)."""
        builder = self.objective.example_builder(self.tokenizer, self.seq_len)
        for item in self.mixture.sources:
            count = 0
            for record, _ in item.source.iter_from(None):
                builder.feed(record)
                count += 1
                if count >= self.validate_records:
                    break
            if count == 0:
                raise MoxinError(f"Data source {item.source.describe()} is empty: it yielded no "
                                 "record. Check its files or options.")

    def setup(self, stage: str) -> None:
        if self.stream is None:
            builder = self.objective.example_builder(self.tokenizer, self.seq_len)
            self.stream = ResumableStream(self.mixture, builder)
            if self._resume_state is not None:
                self.stream.load_state_dict(self._resume_state)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        # num_workers=0 keeps the stream (and its snapshots) in this process: exact resume.
        return DataLoader(self.stream, batch_size=self.micro_batch_size, num_workers=0,
                          collate_fn=self._collate)

    def _collate(self, examples: list[dict]) -> dict:
        batch = self.objective.collate(examples)
        batch["example_index"] = max(e["example_index"] for e in examples)
        return batch

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Called for the batch about to be trained on, after any fetch-ahead.
        self._last_index = batch.pop("example_index")
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self.stream is None or self._last_index is None:
            return {"stream": self._resume_state}
        return {"stream": self.stream.state_after(self._last_index)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = state_dict.get("stream")
        if self.stream is not None and self._resume_state is not None:
            self.stream.load_state_dict(self._resume_state)
