"""moxin: one plugin-based Lightning framework for the whole Moxin model family."""

from moxin_core.errors import MoxinError
from moxin_core.hookspecs import hookimpl, hookspec
from moxin_core.plugins import Registry, get_plugin_manager

__version__ = "0.1.0"

__all__ = ["MoxinError", "Registry", "get_plugin_manager", "hookimpl", "hookspec", "__version__"]
