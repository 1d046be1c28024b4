"""Lightning callbacks that ``moxin train`` adds to its own runs (never to a user's Trainer)."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ThroughputMonitor, TQDMProgressBar

from moxin_core import distributed


def logging_step(step: int, log_every: int, max_steps: int) -> bool:
    """Whether optimizer step ``step`` (0-based) logs its figures: the first (the starting
    loss), every ``log_every``-th and the last. Only these steps turn device tensors into
    numbers (a host-device sync)."""
    return step == 0 or (step + 1) % log_every == 0 or step + 1 >= max_steps


def logged_step_ended(trainer: pl.Trainer) -> bool:
    """Whether the micro-batch just trained ended an optimizer step that logs (``logging_step``
    with the trainer's own ``log_every_n_steps``)."""
    return not trainer.fit_loop._should_accumulate() and logging_step(
        trainer.global_step - 1, trainer.log_every_n_steps, trainer.max_steps)


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar showing ``train/loss`` and ``tok/s`` as of the last logging
    step. Lightning turns every ``prog_bar`` value into a number after each batch (on a GPU, a
    wait for the device); this bar reads them only at logging steps."""

    SHOWN = ("train/loss", "tok/s")

    def __init__(self) -> None:
        super().__init__(refresh_rate=1)
        self._shown: dict[str, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if logged_step_ended(trainer):
            metrics = trainer.callback_metrics
            self._shown = {k: round(float(metrics[k]), 3) for k in self.SHOWN if k in metrics}
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **self._shown}


class TokenThroughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` counting tokens, with tok/s on the progress bar and the
    run's totals.

    ``ThroughputMonitor`` logs ``train/device/items_per_sec`` (tokens/s of one device over the
    last ``window_size`` micro-batches), on several devices ``train/items_per_sec`` (all of
    them), and cumulative ``train/time``, ``train/lengths`` (tokens), at every logging step.
    This subclass shows the per-device rate as ``tok/s`` on the progress bar (and so in
    ``metrics.csv``) and counts, on every rank, the tokens and seconds after the first ``skip``
    micro-batches (start-up and warm-up are not throughput) for the manifest.
    """

    def __init__(self, skip: int = 2, window_size: int = 5) -> None:
        super().__init__(batch_size_fn=lambda batch: 1, length_fn=self._count,
                         window_size=window_size)
        self.skip = skip
        self.tokens = 0
        self.seconds = 0.0
        self._module: Any = None
        self._micro_batches = 0
        self._last_end: float | None = None

    def _count(self, batch: Any) -> int:
        return self._module._batch_tokens  # counted by MoxinModule, never from device tensors

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._module = pl_module
        # the rate window starts where the device was last waited for (a logging step): a
        # whole number of logging intervals, at least 4 micro-batches
        span = trainer.log_every_n_steps * trainer.accumulate_grad_batches
        self.kwargs["window_size"] = span * max(1, math.ceil(4 / span)) + 1
        super().setup(trainer, pl_module, stage)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._last_end is None:
            self._last_end = time.perf_counter()

    @staticmethod
    def _waits_for_gpu(trainer: pl.Trainer) -> bool:
        return trainer.strategy.root_device.type == "cuda"

    @torch.inference_mode()
    def _update(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                iter_num: int) -> None:
        """Record one micro-batch. Lightning's monitor waits for the GPU after every
        micro-batch to time it exactly, which stops the host from queueing the next step's work
        ahead of the GPU; here it waits only where the figures are logged (the interval between
        two logging steps is then exact, and so is the rate over it)."""
        # and once where the run's own tokens/s starts counting (after the warm-up batches)
        if (logged_step_ended(trainer) or self._micro_batches + 1 == self.skip) \
                and self._waits_for_gpu(trainer):
            torch.cuda.synchronize()
        stage = trainer.state.stage
        self._lengths[stage] += self.length_fn(batch)
        self._samples[stage] += self.batch_size_fn(batch)
        self._batches[stage] += 1
        self._throughputs[stage].update(
            time=time.perf_counter() - self._t0s[stage], batches=self._batches[stage],
            samples=self._samples[stage], lengths=self._lengths[stage],
            flops=pl_module.flops_per_batch if hasattr(pl_module, "flops_per_batch") else None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        now = time.perf_counter()
        elapsed, self._last_end = now - (self._last_end or now), now
        self._micro_batches += 1
        if self._micro_batches > self.skip:
            self.tokens += self._count(batch)
            self.seconds += elapsed
        rate = trainer.logged_metrics.get("train/device/items_per_sec")
        if rate is not None:
            # not prog_bar: Lightning would turn it into a number after every batch
            pl_module.log("tok/s", float(rate), on_step=True, on_epoch=False)

    @property
    def mean_tokens_per_second(self) -> float:
        """This rank's tokens/s after the warm-up batches."""
        return self.tokens / self.seconds if self.seconds else 0.0


@contextlib.contextmanager
def kept_random_state() -> Iterator[None]:
    """Python, NumPy, torch CPU and every CUDA device's random state put back after the block:
    work done inside it (scoring a model, which may reseed them) leaves a run's random numbers
    as they would have been without it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class RNGState(pl.Callback):
    """Stores Python, NumPy, torch CPU and CUDA RNG states of every rank in checkpoints and
    restores each rank's own on resume (sampling during training resumes exactly)."""

    def state_dict(self) -> dict[str, Any]:
        # NumPy's key array as a tensor: checkpoints hold tensors and plain values only (they
        # are read with torch.load(weights_only=True))
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {"python": random.getstate(),
                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position),
                           int(has_gauss), float(gauss)],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return distributed.per_rank(state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = distributed.this_rank(state_dict)
        random.setstate(state["python"])
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


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
        if not logging_step(trainer.global_step - 1, trainer.log_every_n_steps, trainer.max_steps):
            return  # nothing was logged at this step (see MoxinModule.training_step)
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
        if self.saved is not None:
            return
        received = trainer.received_sigterm
        if trainer.world_size > 1:
            # saving is collective: every rank must agree (Lightning stops them all at the next
            # step when rank 0 got the signal; any rank's signal is enough to save here)
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.saved = self.dirpath / f"step={trainer.global_step:06d}.ckpt"
            trainer.save_checkpoint(self.saved, weights_only=False)
