"""``LmEvalCallback``: lm-eval scores of the model in memory every N optimizer steps, logged to
the run's loggers as ``lm-eval/<column>`` (TensorBoard, ``logs/metrics.csv``) and appended to
``lm_eval_steps.jsonl`` in the stage folder (rank 0 scores; the other ranks go on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from moxin_core.api import MoxinError, kept_random_state

from moxin_plugin_lmeval.evaluator import LmEval


class LmEvalCallback(pl.Callback):
    """Scores ``pl_module.model`` with lm-eval every ``every_n_steps`` optimizer steps."""

    def __init__(self, evaluator: LmEval, every_n_steps: int,
                 out_dir: str | Path | None = None) -> None:
        if every_n_steps <= 0:
            raise MoxinError(f"lm-eval: every_n_steps must be positive, got {every_n_steps}.")
        self.evaluator, self.every_n_steps = evaluator, every_n_steps
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history: list[dict[str, float]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = type(trainer.strategy).__name__.lower()
        if "fsdp" in strategy or "deepspeed" in strategy:
            raise MoxinError("lm-eval every_n_steps scores the model in memory, which a sharded "
                             "strategy never holds whole on one rank; drop every_n_steps (the "
                             "stage's exported model is still scored when it ends).")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        if self.history and self.history[-1]["step"] == step:  # gradient accumulation
            return
        model = pl_module.model
        was_training = model.training
        # lm-eval seeds Python, NumPy and torch (every CUDA device too): the run's random state
        # is put back, so training goes on as it would without the evaluation
        with kept_random_state():
            scores = self.evaluator.score(model, getattr(pl_module, "processor", None))
        model.train(was_training)
        self.history.append({"step": step, **scores})
        metrics = {f"lm-eval/{k}": v for k, v in scores.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "lm_eval_steps.jsonl", "a") as handle:
                handle.write(json.dumps(self.history[-1]) + "\n")
