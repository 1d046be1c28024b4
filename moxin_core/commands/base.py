"""The contract of a ``moxin`` sub-command (``moxin_commands`` hook)."""

from __future__ import annotations

import argparse
from typing import Any


class Command:
    """One ``moxin`` verb.

    Subclasses set ``help`` (one line for ``moxin --help``), add their arguments in
    ``configure`` and do the work in ``run``, returning the exit status. User errors are raised
    as :class:`moxin_core.MoxinError`; the CLI prints them as one paragraph and exits with 2.
    """

    help: str = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments to its sub-parser."""

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        """Run with the parsed ``args`` and the plugin ``registry``; the exit status."""
        raise NotImplementedError(f"{type(self).__name__}.run")
