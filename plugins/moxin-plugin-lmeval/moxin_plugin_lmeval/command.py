"""``moxin eval MODEL [MODEL ...] (--suite NAME | --tasks a,b)``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from moxin_core.api import Command, MoxinError

from moxin_plugin_lmeval.run import DEFAULT_BATCH_SIZE, check_numbers, evaluate, task_manager


def _limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return int(value) if value >= 1 and value.is_integer() else value


class EvalCommand(Command):
    help = "score models with lm-evaluation-harness (suites, tasks, GGUF files, tables)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("models", nargs="+", metavar="MODEL",
                            help="stage folder, model folder, .gguf file or hub id; several "
                                 "give a comparison table")
        what = parser.add_mutually_exclusive_group()
        what.add_argument("--suite", help="open-llm, zero-shot, reasoning or tiny")
        what.add_argument("--tasks", help="comma-separated lm-eval task or group names")
        parser.add_argument("--num-fewshot", type=int, help="shots for every task (default: "
                            "the suite's per task, else each task's own)")
        parser.add_argument("--limit", type=_limit, help="documents per task (a fraction below "
                            "1: that share); for quick checks, not for reported scores")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
        parser.add_argument("--include-path", action="append", default=[], metavar="DIR",
                            help="a folder of your own lm-eval task YAML files (repeatable)")
        parser.add_argument("--json", dest="json_path", metavar="PATH",
                            help="write the scores as JSON ('-' for stdout)")
        parser.add_argument("--output-dir", metavar="DIR", help="write lm-eval's results JSON "
                            "per model, the table (table.md) and a bar chart (scores.png)")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        from moxin_plugin_lmeval.report import as_json, bar_chart, report

        tasks = None
        if args.tasks is not None:
            tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
            if not tasks:
                raise MoxinError("--tasks names no task; give comma-separated lm-eval task names.")
        check_numbers(args.num_fewshot, args.limit, args.batch_size)
        manager = task_manager(args.include_path)
        runs = []
        for model in args.models:
            print(f"Scoring {model} ...", flush=True)
            runs.append(evaluate(model, suite=args.suite, tasks=tasks,
                                 num_fewshot=args.num_fewshot, limit=args.limit,
                                 batch_size=args.batch_size, registry=registry,
                                 manager=manager))
        _unique_labels(runs)
        text = report(runs, args.suite)
        if args.json_path != "-":
            print(text)
        if args.json_path:
            payload = json.dumps(as_json(runs, args.suite), indent=2)
            if args.json_path == "-":
                print(payload)
            else:
                Path(args.json_path).write_text(payload + "\n")
        if args.output_dir:
            out = Path(args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            for run in runs:
                name = re.sub(r"[^A-Za-z0-9._-]+", "_", run.label)
                (out / f"results_{name}.json").write_text(
                    json.dumps(run.results, indent=2, default=str) + "\n")
            (out / "table.md").write_text(text + "\n")
            chart = bar_chart(runs, out / "scores.png", f"moxin eval: {args.suite or args.tasks}")
            if args.json_path != "-":
                print(f"\nWrote {out}/results_*.json, {out / 'table.md'}, {chart}")
        if args.limit is not None and args.json_path != "-":
            print(f"(--limit {args.limit}: scores on part of each task, not comparable with "
                  "published ones)")
        return 0


def _unique_labels(runs: list) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.label, 0)
        seen[run.label] = count + 1
        if count:
            run.label = f"{run.label} ({count + 1})"
