"""Lightning callbacks that ``moxin train`` adds to its own runs (never to a user's Trainer)."""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


class TokenThroughput(pl.Callback):
    """Shows tokens/s on the progress bar and keeps the run's totals for the summary.

    Tokens/s is averaged over the last ``window`` micro-batches; ``mean_tokens_per_second`` covers
    the whole run after the first ``skip`` batches (start-up and warm-up are not throughput).
    """

    def __init__(self, window: int = 20, skip: int = 2) -> None:
        self.window, self.skip = window, skip
        self._recent: deque[tuple[int, float]] = deque(maxlen=window)
        self._last: float | None = None
        self.tokens = 0
        self.seconds = 0.0
        self._batches = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        elapsed, self._last = now - (self._last or now), now
        tokens = pl_module.objective.num_tokens(batch)
        self._batches += 1
        if self._batches > self.skip:
            self.tokens += tokens
            self.seconds += elapsed
        self._recent.append((tokens, elapsed))
        total_time = sum(t for _, t in self._recent)
        if total_time > 0:
            pl_module.log("tok/s", sum(n for n, _ in self._recent) / total_time, prog_bar=True,
                          on_step=True, on_epoch=False)

    @property
    def mean_tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class RNGState(pl.Callback):
    """Stores Python, NumPy and torch RNG states in checkpoints and restores them on resume."""

    def state_dict(self) -> dict[str, Any]:
        return {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        np.random.set_state(state_dict["numpy"])
        torch.set_rng_state(state_dict["torch"])
