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


class MetricsHistory(pl.Callback):
    """Every optimizer step's metrics, kept in the checkpoint so a resumed run loses no row.

    Lightning's CSV logger writes in batches and starts a new file on resume; this history is the
    source of ``metrics.csv``. It must run after callbacks that log (``TokenThroughput``) and before
    ``ModelCheckpoint`` (Lightning runs checkpoint callbacks last).
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._lr: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if trainer.optimizers:  # the rate this step uses (the scheduler moves it after the step)
            self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # not an optimizer step
        row = {"step": trainer.global_step - 1}  # the step this batch completed, 0-based
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") or key == "tok/s":
                row[key] = float(value)
        if self._lr is not None:
            row["lr"] = self._lr
        self.rows = [r for r in self.rows if r["step"] != row["step"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class CheckpointOnTerminate(pl.Callback):
    """Saves a checkpoint when the process got SIGTERM (a scheduler's pre-emption notice).

    Lightning stops the loop with ``SIGTERMException`` right after the batch in which the signal
    arrived; at an optimizer-step boundary weights, optimizer and data position agree, so a
    checkpoint saved here resumes exactly. Inside a gradient-accumulation window nothing is saved
    and the last periodic checkpoint stands.
    """

    def __init__(self, dirpath: Any) -> None:
        self.dirpath = dirpath
        self.saved: Any = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.received_sigterm or self.saved is not None:
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.saved = self.dirpath / f"step={trainer.global_step:06d}.ckpt"
            trainer.save_checkpoint(self.saved, weights_only=False)
