"""``moxin reproduce``: train a finished run again from its manifests and compare the weights."""

from __future__ import annotations

import argparse
from typing import Any

from moxin_core import distributed
from moxin_core.commands.base import Command


class ReproduceCommand(Command):
    help = "re-run a finished run from its manifests and check the weights are bit-identical"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a `moxin "
                            "train` run (every stage in it is reproduced, in the order it ran)")
        parser.add_argument("--stage", help="reproduce only this stage (the other stages' "
                            "models are copied in as its inputs)")
        parser.add_argument("--out", help="folder for the reproduction (default: "
                            "RUN_DIR-reproduced; must be new or empty)")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        from moxin_core.training.reproduce import reproduce_run

        checks = reproduce_run(args.run_dir, args.out, stage=args.stage, registry=registry)
        if distributed.is_rank_zero():
            print()
            for check in checks:
                print("\n".join(check.lines()))
            same = all(c.identical for c in checks)
            print("reproduced: every stage's weights are bit-identical" if same else
                  "NOT reproduced: see the differences above")
        distributed.shutdown()
        return 0 if all(c.identical for c in checks) else 1
