"""``moxin export``: write a trained model with a registered exporter (``hf``, ``gguf``, ...)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from moxin_core.commands.base import Command
from moxin_core.errors import MoxinError


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: yaml(v)}`` for exporter options."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MoxinError(f"--option {item!r}: expected KEY=VALUE, e.g. --option outtype=q8_0.")
        options[key.strip()] = yaml.safe_load(value) if value else ""
    return options


class ExportCommand(Command):
    help = "export a trained model"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="stage folder or model folder")
        parser.add_argument("--format", default="hf")
        parser.add_argument("--out", required=True)
        parser.add_argument("--force", action="store_true", help="replace an existing output")
        parser.add_argument("--option", dest="options", action="append", default=[],
                            metavar="KEY=VALUE", help="exporter option, e.g. --option outtype=q8_0")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        import inspect
        from pathlib import Path

        exporter = registry.get("exporters", args.format)()
        if Path(args.out).is_file() and not args.force:
            raise MoxinError(f"--out {args.out} is a file that exists already; choose another "
                             "--out, or remove the file (--force replaces an existing output "
                             "of the same kind).")
        options = parse_options(args.options)
        if "registry" in inspect.signature(exporter).parameters:
            options["registry"] = registry  # to reload the model through its family
        try:
            path = exporter(args.model, args.out, force=args.force, **options)
        except TypeError as exc:
            if "unexpected keyword" not in str(exc):
                raise
            given = ", ".join(k for k in options if k != "registry")
            raise MoxinError(f"Exporter {args.format!r} does not take option(s) {given} "
                             f"({exc}).") from None
        print(f"Exported {args.model} as {args.format} to {path}")
        return 0
