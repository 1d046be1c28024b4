"""``moxin train``: run a variant's stages (``moxin_core.training.stage``)."""

from __future__ import annotations

import argparse
from typing import Any

from moxin_core import distributed
from moxin_core.commands.base import Command
from moxin_core.reporting import metric_ends


def format_result(result: Any) -> list[str]:
    """The lines ``moxin train`` prints for one stage."""
    note = " (already complete)" if result.skipped else ""
    loss = (f"loss {result.first_loss:.3f} -> {result.last_loss:.3f}"
            if result.first_loss is not None else "no loss logged")
    if result.token_loss:
        loss += (f" (summed over tokens; per token {result.token_loss[0]:.3f} -> "
                 f"{result.token_loss[1]:.3f})")
    rewards = metric_ends(result.out_dir, "train/reward")
    if rewards:  # an RL stage: its loss says little, its reward how it went
        loss += f", reward {rewards[0]:.3f} -> {rewards[1]:.3f} (mean of first/last 5 steps)"
    ranks = f" on {result.world_size} ranks" if result.world_size > 1 else ""
    lines = [f"stage {result.name}{note}: {result.steps} steps, {loss}, "
             f"{result.tokens_per_second:,.0f} tokens/s{ranks} -> {result.out_dir}"]
    skipped = {k: v for k, v in (result.data_stats or {}).items()
               if v and k.startswith(("skipped", "dropped", "truncated"))}
    if skipped:
        lines.append("    data: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                             for k, v in skipped.items()))
    for name, scores in result.evals.items():
        start = result.start_evals.get(name)
        if start:
            lines.append(f"    {name} before training: "
                         + ", ".join(f"{k} {v:.4g}" for k, v in start.items()))
        lines.append(f"    {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    return lines


class TrainCommand(Command):
    help = "run a variant's stages"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("variant", help="a variant name (`moxin variants`) or a .yaml variant "
                            "file with the keys `moxin variants --json` shows")
        parser.add_argument("--out", required=True, help="run folder (one subfolder per stage)")
        parser.add_argument("--stage", help="run only this stage")
        parser.add_argument("--max-steps", type=int, help="override max_steps of every stage")
        parser.add_argument("--config", help="YAML file of settings")
        parser.add_argument("--set", dest="sets", action="append", default=[],
                            metavar="KEY=VALUE",
                            help="override a setting (KEY or STAGE.KEY); repeatable")
        parser.add_argument("--resume", action="store_true",
                            help="continue from the last checkpoint in --out")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        from moxin_core.training.stage import train_variant

        results = train_variant(args.variant, args.out, stage=args.stage,
                                max_steps=args.max_steps, config=args.config, sets=args.sets,
                                resume=args.resume, registry=registry)
        if distributed.is_rank_zero():
            for result in results:
                print("\n".join(format_result(result)))
        distributed.shutdown()
        return 0
