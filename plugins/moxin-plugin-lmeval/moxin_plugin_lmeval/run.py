"""Scoring a model with lm-evaluation-harness: which model, which tasks, the run, the scores.

Models: a run's stage folder, an HF folder or a hub id go through the model's moxin family and
are handed to lm-eval's ``HFLM`` as a model instance (so a model in memory is scored the same
way); a ``.gguf`` file is scored by llama.cpp (:mod:`moxin_plugin_lmeval.gguf_lm`). Tasks are
lm-eval's, this plugin's (``tasks/``: the offline ``tiny`` tasks, AMC, OlympiadBench) and the
user's ``--include-path`` folders, resolved by lm-eval's ``TaskManager`` as its own CLI does.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moxin_core.api import MoxinError

from moxin_plugin_lmeval.suites import SUITES, Column

TASKS_DIR = Path(__file__).parent / "tasks"
DEFAULT_BATCH_SIZE = 8


@dataclass
class Scores:
    """One model's run: its label, the table's columns and values (fractions), lm-eval's
    results (``results``, ``groups``, ``configs``, ``versions``, ``n-shot``, ``n-samples``)."""

    label: str
    columns: list[Column]
    values: dict[str, float | None]
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def average(self) -> float | None:
        known = [v for v in self.values.values() if v is not None]
        return sum(known) / len(known) if known and len(known) == len(self.values) else None

    def flat(self) -> dict[str, float]:
        """``{column label: value}`` plus ``average`` (the evaluator's scores)."""
        out = {c.label: v for c, v in zip(self.columns, self.values.values()) if v is not None}
        if self.average is not None:
            out["average"] = self.average
        return out


# ----------------------------------------------------------------------------------- checks

def check_numbers(num_fewshot: int | None, limit: float | None, batch_size: int | None) -> None:
    if num_fewshot is not None and num_fewshot < 0:
        raise MoxinError(f"--num-fewshot must be 0 or more, got {num_fewshot}.")
    if limit is not None and limit <= 0:
        raise MoxinError(f"--limit must be positive (a number of documents per task, or a "
                         f"fraction below 1), got {limit}.")
    if batch_size is not None and batch_size <= 0:
        raise MoxinError(f"--batch-size must be positive, got {batch_size}.")


def task_manager(include_paths: list[str] | tuple[str, ...] = ()) -> Any:
    """lm-eval's TaskManager over its own tasks, this plugin's and ``include_paths``."""
    from lm_eval.tasks import TaskManager

    for path in include_paths:
        if not Path(path).is_dir():
            raise MoxinError(f"--include-path {path}: no such folder; give a folder of lm-eval "
                             "task YAML files.")
    return TaskManager(include_path=[str(TASKS_DIR), *map(str, include_paths)])


def columns_for(suite: str | None, tasks: list[str] | None,
                num_fewshot: int | None) -> list[Column]:
    """The table's columns: a suite's, or one per task (``metric`` empty: the task's first)."""
    if (suite is None) == (not tasks):
        raise MoxinError("Give either --suite NAME or --tasks a,b (one of them). Suites: "
                         f"{', '.join(SUITES)}.")
    if suite is not None:
        if suite not in SUITES:
            raise MoxinError(f"Unknown suite {suite!r}. Known suites: "
                             + "; ".join(f"{s.name} ({s.description})" for s in SUITES.values())
                             + ". Or name lm-eval tasks with --tasks.")
        columns = list(SUITES[suite].columns)
        if num_fewshot is not None:
            columns = [Column(c.label, c.task, num_fewshot, c.metric) for c in columns]
        return columns
    return [Column(t, t, num_fewshot if num_fewshot is not None else -1, "") for t in tasks]


def check_tasks(manager: Any, names: list[str]) -> None:
    """Every name is a task, group or tag lm-eval knows (with the include paths)."""
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (close: {', '.join(close)})" if close else ""))
    raise MoxinError(
        f"Unknown lm-eval task {'; '.join(hints)}. lm-eval knows {len(known)} tasks, groups and "
        "tags (list them with `lm-eval ls tasks`); moxin's own are "
        f"{', '.join(sorted(n for n in known if n.startswith('moxin_')))}; "
        "add task folders of your own with --include-path DIR.")


def load_tasks(manager: Any, names: list[str]) -> None:
    """Load each task's data; a data set that cannot be loaded (a hub task while offline) is an
    error naming it and how to provide it."""
    for name in names:
        try:
            manager.load([name])
        except MoxinError:
            raise
        except Exception as error:  # datasets/hub errors come in many types
            raise MoxinError(_data_error(manager, name, error)) from None


def _data_error(manager: Any, name: str, error: Exception) -> str:
    config: dict = {}
    entry = manager.task_index.get(name) if hasattr(manager, "task_index") else None
    if entry is not None and getattr(entry, "yaml_path", None):
        try:
            with open(entry.yaml_path) as handle:
                config = {k: v for k, v in (yaml.load(handle, Loader=_Lenient) or {}).items()
                          if isinstance(k, str)}
        except Exception:  # a task file we cannot read quickly: name what we know
            config = {}
    dataset = config.get("dataset_path")
    subset = config.get("dataset_name")
    what = f"the data set {dataset}" + (f" ({subset})" if subset else "") if dataset else \
        "its data set"
    load = (f"datasets.load_dataset({dataset!r}" + (f", {subset!r}" if subset else "") + ")"
            if dataset else "the task's data loader")
    return (f"Task {name!r} needs {what}, which could not be loaded "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''})."
            " Without the Hugging Face hub, load it once where the hub is reachable "
            f"(`python -c \"import datasets; {load}\"`) and copy the datasets cache "
            "(~/.cache/huggingface) to this machine (HF_DATASETS_OFFLINE=1 then reads it), or "
            "write a task over local files and pass its folder with --include-path.")


class _Lenient(yaml.SafeLoader):
    """Reads task YAML without resolving lm-eval's ``!function`` tags."""


_Lenient.add_multi_constructor("!", lambda loader, suffix, node: None)


# ----------------------------------------------------------------------------------- models

def looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return (len(parts) == 2 and all(parts) and not text.startswith((".", "~"))
            and not Path(text).suffix)


def load_lm(model: Any, batch_size: int = DEFAULT_BATCH_SIZE, tokenizer: Any = None,
            registry: Any = None) -> tuple[Any, str]:
    """``(lm-eval model, label)`` for a model instance, a ``.gguf`` file, a stage or model
    folder, or a hub id."""
    if not isinstance(model, (str, Path)):
        if tokenizer is None:
            raise MoxinError("Scoring a model in memory needs its tokenizer (tokenizer=...).")
        # a model in memory (being trained) stays where it is
        return hf_lm(model, tokenizer, batch_size, place=False), type(model).__name__
    text = str(model)
    path = Path(text).expanduser()
    if path.suffix == ".gguf" or (path.is_file() and _is_gguf(path)):
        from moxin_plugin_lmeval.gguf_lm import GGUFLM

        return GGUFLM(path), path.name
    if path.is_file():
        raise MoxinError(f"{text!r} is a file but not a GGUF file. moxin eval takes a run's "
                         "stage folder, a model folder, a .gguf file or a hub id (owner/name).")
    if not path.exists() and not looks_like_hub_id(text):
        raise MoxinError(f"Model {text!r} is none of: a stage folder (OUT/STAGE from moxin "
                         "train), a model folder (config.json), a .gguf file, a hub id "
                         "(owner/name). Check the path.")
    from moxin_core.api import load_model

    try:
        loaded, processor, family = load_model(text, registry)
    except MoxinError:
        raise
    except OSError as error:  # transformers: not a local folder and not reachable on the hub
        raise MoxinError(f"Model {text!r} is not a local folder and could not be loaded from "
                         f"the Hugging Face hub ({str(error).splitlines()[0][:200]}). Give a "
                         "local folder, or download it where the hub is reachable.") from None
    if getattr(family, "name", "") != "causal-lm":
        raise MoxinError(f"{text!r} is a {family.name} model; lm-eval scores text models. For "
                         "a vision-language model, score its language model folder (hf/lm).")
    return hf_lm(loaded, processor, batch_size), _label(path, text)


def _label(path: Path, text: str) -> str:
    if path.exists():
        resolved = path.resolve()
        return resolved.parent.name if resolved.name == "hf" else resolved.name
    return text


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"GGUF"


def hf_lm(model: Any, tokenizer: Any, batch_size: int, place: bool = True) -> Any:
    """lm-eval's ``HFLM`` over a loaded transformers model; ``place``: moved to the GPU when
    there is one (a model this run loaded; never a model in memory that is being trained)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    if place and torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        model = model.to("cuda")
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)  # instance warning
    return HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size)


# ----------------------------------------------------------------------------------- runs

def evaluate(model: Any, suite: str | None = None, tasks: list[str] | None = None,
             num_fewshot: int | None = None, limit: float | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, include_paths: tuple[str, ...] = (),
             tokenizer: Any = None, registry: Any = None, lm: Any = None,
             label: str | None = None, manager: Any = None,
             log_samples: bool = False) -> Scores:
    """Score ``model`` on a suite or tasks; tasks with different shot counts run as separate
    lm-eval calls over the same loaded model. ``log_samples`` keeps lm-eval's per-document
    records (``results["samples"]``)."""
    check_numbers(num_fewshot, limit, batch_size)
    columns = columns_for(suite, tasks, num_fewshot)
    manager = manager or task_manager(include_paths)
    check_tasks(manager, [c.task for c in columns])
    if lm is None:
        lm, default_label = load_lm(model, batch_size, tokenizer, registry)
        label = label or default_label
    merged: dict[str, Any] = {}
    for shots in dict.fromkeys(c.shots for c in columns):
        names = list(dict.fromkeys(c.task for c in columns if c.shots == shots))
        merge_results(merged, run_tasks(lm, manager, names, None if shots < 0 else shots, limit,
                                        batch_size, log_samples))
    values = {c.label: pick(merged, c) for c in columns}
    columns = [Column(c.label, c.task, c.shots, c.metric or _first_metric(merged, c.task))
               for c in columns]
    return Scores(label or str(model), columns, values, merged)


def quiet_lm_eval() -> None:
    """lm-eval's per-task notes (custom data set kwargs, shot overrides) at error level only;
    its progress bars stay."""
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_tasks(lm: Any, manager: Any, names: list[str], num_fewshot: int | None,
              limit: float | None, batch_size: int, log_samples: bool = False) -> dict:
    from lm_eval import simple_evaluate

    quiet_lm_eval()
    try:
        results = simple_evaluate(model=lm, tasks=names,
                                  num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                                  task_manager=manager, log_samples=log_samples,
                                  verbosity="ERROR")
    except MoxinError:
        raise
    except Exception:
        # a task whose data cannot be loaded (offline hub) fails inside lm-eval with the data
        # library's error: load each task alone to name it and say how to provide the data
        load_tasks(manager, names)
        raise
    if results is None:  # lm-eval returns None on ranks other than 0
        return {}
    return results


def merge_results(into: dict, results: dict) -> None:
    for key in ("results", "groups", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples", "group_subtasks", "samples"):
        if key in results:
            into.setdefault(key, {}).update(results[key])
    for key in ("config", "lm_eval_version", "date", "total_evaluation_time_seconds"):
        if key in results:
            into[key] = results[key]


def _first_metric(results: dict, task: str) -> str:
    row = (results.get("results") or {}).get(task, {})
    metrics = [k.split(",")[0] for k in row if "," in k and "_stderr" not in k]
    return metrics[0] if metrics else ""


def pick(results: dict, column: Column) -> float | None:
    """The column's metric of its task (any filter; a task's own or its group's row)."""
    metric = column.metric or _first_metric(results, column.task)
    for table in ("results", "groups"):
        row = (results.get(table) or {}).get(column.task) or {}
        for key, value in row.items():
            name = key.split(",")[0]
            if name == metric and isinstance(value, (int, float)):
                return float(value)
    return None
