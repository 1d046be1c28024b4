"""moxin: one plugin-based Lightning framework for the whole Moxin model family."""

import logging

from moxin_core.errors import MoxinError
from moxin_core.hookspecs import hookimpl, hookspec
from moxin_core.plugins import Registry, get_plugin_manager

__version__ = "0.1.0"

# bitsandbytes (QLoRA; imported by peft and transformers when installed): offline, its CPU
# backend cannot fetch an optional kernel from the hub and says so at import, then uses its own
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["MoxinError", "Registry", "get_plugin_manager", "hookimpl", "hookspec", "__version__"]
