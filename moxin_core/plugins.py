"""Plugin manager and name registries.

``get_plugin_manager()`` builds a fresh :class:`pluggy.PluginManager` (nothing is created at import
time, tests build their own), loads every entry point of the ``moxin`` group with error isolation,
and checks that every hook implementation matches a spec. ``Registry`` merges the ``{name:
factory}`` results of the registry hooks per category and resolves names.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from moxin_core import hookspecs
from moxin_core.errors import MoxinError, PluginLoadError

ENTRY_POINT_GROUP = "moxin"

#: category name -> hook name. The category names are those ``moxin plugins --json`` reports.
CATEGORIES: dict[str, str] = {
    "objectives": "moxin_objectives",
    "data_sources": "moxin_data_sources",
    "vision_encoders": "moxin_vision_encoders",
    "exporters": "moxin_exporters",
    "evaluators": "moxin_evaluators",
    "reward_functions": "moxin_reward_functions",
    "runtimes": "moxin_runtimes",
    "models": "moxin_models",
    "variants": "moxin_variants",
}

#: singular nouns for error messages
_NOUNS = {
    "objectives": "objective",
    "data_sources": "data source",
    "vision_encoders": "vision encoder",
    "exporters": "exporter",
    "evaluators": "evaluator",
    "reward_functions": "reward function",
    "runtimes": "runtime",
    "models": "model preset",
    "variants": "variant",
}


@dataclass
class PluginInfo:
    """What is known about one loaded (or failed) plugin."""

    name: str
    distribution: str
    version: str
    error: str | None = None
    plugin: Any = field(default=None, repr=False)


class MoxinPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers which distribution each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def register_plugin(self, plugin: Any, name: str, distribution: str = "<local>",
                        version: str = "") -> None:
        """Register ``plugin`` under ``name`` and remember its distribution for messages."""
        self.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, distribution, version, None, plugin)

    def distribution_of(self, plugin: Any) -> str:
        for info in self.infos.values():
            if info.plugin is plugin:
                return info.distribution
        return self.get_name(plugin) or repr(plugin)

    @property
    def failed(self) -> list[PluginInfo]:
        return [info for info in self.infos.values() if info.error is not None]


def _load_entry_points(pm: MoxinPluginManager, strict: bool) -> None:
    entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                          key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))
    for ep in entry_points:
        dist = ep.dist.name if ep.dist else "<unknown>"
        version = ep.dist.version if ep.dist else ""
        name = ep.name if ep.name not in pm.infos else f"{dist}:{ep.name}"
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # one broken plugin must not stop the others
            if strict:
                raise
            message = f"{type(exc).__name__}: {exc}"
            pm.infos[name] = PluginInfo(name, dist, version, message)
            pm.infos[name].traceback = traceback.format_exc()  # type: ignore[attr-defined]
            continue
        pm.register_plugin(plugin, name=name, distribution=dist, version=version)


def get_plugin_manager(load_entry_points: bool = True) -> MoxinPluginManager:
    """Build a plugin manager with the hook specs and every installed ``moxin`` plugin.

    A plugin that fails to import is recorded in ``pm.infos`` with its distribution, version and
    error; the rest still load. Set ``MOXIN_STRICT_PLUGINS=1`` to re-raise the import error instead.
    """
    pm = MoxinPluginManager()
    if load_entry_points:
        strict = os.environ.get("MOXIN_STRICT_PLUGINS", "") not in ("", "0", "false", "False")
        _load_entry_points(pm, strict)
    pm.check_pending()
    return pm


class Registry:
    """Name lookup over the registry hooks of one plugin manager.

    Each category is merged lazily on first use, so a duplicate name in one category does not
    stop lookups in another.
    """

    def __init__(self, pm: MoxinPluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()
        self._merged: dict[str, dict[str, Any]] = {}

    def provided_by(self, category: str) -> list[tuple[Any, dict[str, Any]]]:
        """``[(plugin, {name: factory})]`` for every plugin implementing the category's hook."""
        hook = getattr(self.pm.hook, CATEGORIES[category])
        results = []
        for impl in hook.get_hookimpls():
            provided = impl.function()
            if not isinstance(provided, dict):
                raise MoxinError(
                    f"Plugin {self.pm.distribution_of(impl.plugin)!r} returned "
                    f"{type(provided).__name__} from {CATEGORIES[category]}(); a registry hook "
                    "must return a dict {name: factory}.")
            results.append((impl.plugin, provided))
        return results

    def category(self, category: str) -> dict[str, Any]:
        """The merged ``{name: factory}`` of one category (duplicates are an error)."""
        if category not in CATEGORIES:
            raise MoxinError(f"Unknown registry category {category!r}; "
                             f"known: {', '.join(CATEGORIES)}.")
        if category not in self._merged:
            merged: dict[str, Any] = {}
            owner: dict[str, Any] = {}
            for plugin, provided in self.provided_by(category):
                for name, factory in provided.items():
                    if name in merged:
                        first = self.pm.distribution_of(owner[name])
                        second = self.pm.distribution_of(plugin)
                        raise MoxinError(
                            f"The {_NOUNS[category]} name {name!r} is registered twice: by "
                            f"distribution {first!r} and by distribution {second!r}. Uninstall "
                            "one of them or rename the entry in one plugin.")
                    merged[name] = factory
                    owner[name] = plugin
            self._merged[category] = dict(sorted(merged.items()))
        return self._merged[category]

    def names(self, category: str) -> list[str]:
        return list(self.category(category))

    def get(self, category: str, name: str) -> Any:
        """Resolve ``name`` in ``category``; an unknown name lists the known ones."""
        entries = self.category(category)
        if name in entries:
            return entries[name]
        known = ", ".join(entries) or "(none)"
        message = f"Unknown {_NOUNS[category]} {name!r}. Known {category.replace('_', ' ')}: {known}."
        failed = self.pm.failed
        if failed:
            message += " These plugins failed to load and may provide it: " + "; ".join(
                f"{info.distribution} ({info.name}): {info.error}" for info in failed) + "."
            raise PluginLoadError(message)
        raise MoxinError(message + " Run `moxin plugins` to see what is installed.")


def describe_plugins(pm: MoxinPluginManager) -> list[dict[str, Any]]:
    """One JSON-able entry per plugin, loaded or failed, sorted by name."""
    entries = []
    for name, info in sorted(pm.infos.items()):
        entry: dict[str, Any] = {"name": name, "distribution": info.distribution,
                                 "version": info.version, "hooks": [], "provides": {},
                                 "error": info.error}
        if info.error is None:
            impls = pm.get_hookcallers(info.plugin) or []
            entry["hooks"] = sorted(caller.name for caller in impls)
            for category, hook_name in CATEGORIES.items():
                if hook_name in entry["hooks"]:
                    provided = getattr(info.plugin, hook_name)()
                    entry["provides"][category] = sorted(provided)
        entries.append(entry)
    return entries
