"""The ``lm-eval`` evaluator of stages (its during-training callback is in ``callback.py``).

In a variant: ``evaluators: [{name: lm-eval, suite: tiny, limit: 200}]`` scores the stage's
exported model when the stage ends (``eval.json``); adding ``every_n_steps: N`` also scores the
model being trained every N optimizer steps (rank 0, the model as it is in memory) and logs the
scores as ``lm-eval/<column>`` to the stage's loggers (metrics.csv, TensorBoard).
"""

from __future__ import annotations

from typing import Any

from moxin_core.api import MoxinError

from moxin_plugin_lmeval.run import DEFAULT_BATCH_SIZE, check_numbers, columns_for


class LmEval:
    """``LmEval(suite=..., tasks=[...], num_fewshot, limit, batch_size)(model_path) -> scores``
    (fractions per column, and ``average``)."""

    def __init__(self, suite: str | None = None, tasks: list[str] | str | None = None,
                 num_fewshot: int | None = None, limit: float | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, include_paths: list[str] | None = None,
                 every_n_steps: int | None = None) -> None:
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        check_numbers(num_fewshot, limit, batch_size)
        columns_for(suite, tasks, num_fewshot)  # a bad suite fails when the variant is read
        if every_n_steps is not None and every_n_steps <= 0:
            raise MoxinError(f"lm-eval: every_n_steps must be positive, got {every_n_steps}.")
        self.suite, self.tasks, self.num_fewshot = suite, tasks, num_fewshot
        self.limit, self.batch_size = limit, batch_size
        self.include_paths = tuple(include_paths or ())
        self.every_n_steps = every_n_steps
        self._manager: Any = None  # lm-eval's task index, built once

    def score(self, model: Any, tokenizer: Any = None) -> dict[str, float]:
        from moxin_plugin_lmeval.run import evaluate, task_manager

        if self._manager is None:
            self._manager = task_manager(self.include_paths)
        return evaluate(model, suite=self.suite, tasks=self.tasks, num_fewshot=self.num_fewshot,
                        limit=self.limit, batch_size=self.batch_size, tokenizer=tokenizer,
                        manager=self._manager).flat()

    def __call__(self, model_path: str) -> dict[str, float]:
        return self.score(model_path)
