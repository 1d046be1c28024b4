"""The ``moxin`` command line: every verb is a registered command (``moxin_commands`` hook).

The core's verbs come from its built-in plugin, others from installed plugins; a command whose
``configure`` fails is left out with a warning and the rest work. User errors
(:class:`MoxinError`) print as one paragraph and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from moxin_core.errors import MoxinError


class _Parser(argparse.ArgumentParser):
    """argparse with moxin's error format: one paragraph, the command and how to get help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"moxin: error: {self.prog}: {message}. Run `{self.prog} --help` for the options.",
              file=sys.stderr)
        self.exit(2)


def build_parser(registry: Any) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """The parser with one sub-parser per registered command, and ``{verb: command}``.

    A duplicate command name (two plugins) or a broken command is reported and left out.
    """
    parser = _Parser(prog="moxin", description="Train, export and run the Moxin "
                                     "model family with plugins.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    commands: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for plugin, provided in registry.provided_by("commands"):
        distribution = registry.pm.distribution_of(plugin)
        for name, factory in sorted(provided.items()):
            if name in seen:
                _warn(f"the command {name!r} is registered twice (by {seen[name]!r} and by "
                      f"{distribution!r}); {distribution!r}'s is left out.")
                continue
            try:
                command = factory()
                command.configure(argparse.ArgumentParser(prog=f"moxin {name}"))  # a dry run
            except Exception as exc:  # one broken command must not stop the CLI
                _warn(f"the command {name!r} of {distribution!r} is left out: "
                      f"{type(exc).__name__}: {exc}")
                continue
            command.configure(sub.add_parser(name, help=command.help))
            commands[name], seen[name] = command, distribution
    return parser, commands


def _warn(message: str) -> None:
    print(f"moxin: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, registry: Any = None) -> int:
    """Run ``moxin ARGV`` (``registry``: the installed plugins by default)."""
    from moxin_core.plugins import Registry

    try:
        registry = registry or Registry()
        parser, commands = build_parser(registry)
        args = parser.parse_args(argv)
        return commands[args.verb].run(args, registry) or 0
    except MoxinError as exc:
        print(f"moxin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moxin: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
