"""The one exception type a user of moxin is meant to read.

Every error a user can cause (a bad name, a bad file, a bad hyper-parameter) is raised as
:class:`MoxinError` with a message that says what was wrong, where, and what to do. The CLI prints
the message as one paragraph and exits non-zero without a traceback; library callers can catch it.
"""

from __future__ import annotations


class MoxinError(Exception):
    """A user-facing error: the message is complete and actionable on its own."""


class PluginLoadError(MoxinError):
    """A plugin that a run needs failed to load (the message names distribution and error)."""
