"""``moxin demo``: the whole tiny pipeline (``moxin_core.demo``)."""

from __future__ import annotations

import argparse
from typing import Any

from moxin_core.commands.base import Command


class DemoCommand(Command):
    help = ("the whole family at tiny scale: tokenizer, pretraining, SFT, DPO, reasoning SFT, "
            "GRPO, VLM, lm-eval and GGUF export")

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", default="runs/demo", help="run folder (replaced)")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        from moxin_core.demo import run_demo

        run_demo(args.out, registry=registry)
        return 0
