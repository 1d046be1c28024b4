"""The ``moxin`` sub-commands: one module per verb or verb group, registered by the core's
built-in plugin through ``moxin_commands`` like any plugin's commands."""

from moxin_core.commands.base import Command

__all__ = ["Command"]
