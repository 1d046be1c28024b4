"""Plugin manager and name registries.

``get_plugin_manager()`` builds a fresh :class:`pluggy.PluginManager` (nothing is created at import
time, tests build their own) and loads every entry point of the ``moxin`` group. Each plugin is
loaded in isolation: importing it, registering it (hook arguments checked against the specs,
``moxin_addhooks`` run), checking that every hook it implements has a spec, and calling its
registry hooks (each must return a dict) either all succeed, or the plugin is left out and its
error recorded in ``pm.infos`` for ``moxin plugins`` to show. ``MOXIN_STRICT_PLUGINS=1`` raises
the first such error instead. ``Registry`` merges the ``{name: factory}`` results of the registry
hooks per category and resolves names.
"""

from __future__ import annotations

import difflib
import inspect
import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from moxin_core import hookspecs
from moxin_core.errors import MoxinError, PluginLoadError

ENTRY_POINT_GROUP = "moxin"
STRICT_ENV = "MOXIN_STRICT_PLUGINS"

#: category name -> hook name. The category names are those ``moxin plugins --json`` reports.
CATEGORIES: dict[str, str] = {
    "objectives": "moxin_objectives",
    "data_sources": "moxin_data_sources",
    "vision_encoders": "moxin_vision_encoders",
    "exporters": "moxin_exporters",
    "evaluators": "moxin_evaluators",
    "reward_functions": "moxin_reward_functions",
    "runtimes": "moxin_runtimes",
    "model_families": "moxin_model_families",
    "models": "moxin_models",
    "variants": "moxin_variants",
    "commands": "moxin_commands",
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
    "model_families": "model family",
    "models": "model preset",
    "variants": "variant",
    "commands": "command",
}


@dataclass
class PluginInfo:
    """What is known about one loaded (or failed) plugin."""

    name: str
    distribution: str
    version: str
    error: str | None = None
    plugin: Any = field(default=None, repr=False)
    #: category -> the dict its registry hook returned (filled when the plugin loads)
    provides: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    #: its hook names and registry hooks were validated (provides is final)
    checked: bool = False
    traceback: str | None = field(default=None, repr=False)


def strict_from_environment() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0", "false", "False")


class MoxinPluginManager(pluggy.PluginManager):
    """A pluggy manager that loads each plugin in isolation and remembers its distribution.

    Args:
        strict: raise a plugin's load error instead of recording it.
    """

    def __init__(self, strict: bool = False) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.strict = strict
        self.infos: dict[str, PluginInfo] = {}
        self.add_hookspecs(hookspecs)
        self.hook.moxin_addhooks.call_historic(kwargs={"pluginmanager": self})

    # -- loading
    def register_plugin(self, plugin: Any, name: str, distribution: str = "<local>",
                        version: str = "", check: bool = True) -> PluginInfo:
        """Register and validate ``plugin``; a failure is recorded in the returned info (and
        raised in strict mode). ``check=False`` defers the unknown-hook check
        (:meth:`check_plugins`) until every plugin had the chance to add its hook specs."""
        info = PluginInfo(name, distribution, version, plugin=plugin)
        self.infos[name] = info
        try:
            self.register(plugin, name=name)
            if check:
                self._check_hooks_known(info)
                self._collect(info)
        except Exception as exc:  # one broken plugin must not stop the others
            self._fail(info, exc)
        return info

    def check_plugins(self) -> None:
        """Validate every loaded plugin not yet validated (unknown hooks, registry hooks)."""
        for info in list(self.infos.values()):
            if info.error is None and not info.checked and info.plugin is not None:
                try:
                    self._check_hooks_known(info)
                    self._collect(info)
                except Exception as exc:
                    self._fail(info, exc)

    def record_failure(self, name: str, distribution: str, version: str,
                       exc: BaseException) -> PluginInfo:
        """Record a plugin that could not even be imported (raised in strict mode)."""
        info = PluginInfo(name, distribution, version)
        self.infos[name] = info
        self._fail(info, exc)
        return info

    def _fail(self, info: PluginInfo, exc: BaseException) -> None:
        if self.strict:
            raise exc
        info.error = f"{type(exc).__name__}: {exc}"
        info.traceback = traceback.format_exc()
        info.provides = {}
        if info.plugin is not None and self.is_registered(info.plugin):
            self.unregister(info.plugin)

    def _check_hooks_known(self, info: PluginInfo) -> None:
        known = [name for name in vars(self.hook) if not name.startswith("_")
                 and getattr(self.hook, name).has_spec()]
        for caller in self.get_hookcallers(info.plugin) or []:
            if caller.has_spec():
                continue
            if all(impl.optionalhook for impl in caller.get_hookimpls()
                   if impl.plugin is info.plugin):
                continue
            close = difflib.get_close_matches(caller.name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise pluggy.PluginValidationError(
                info.plugin, f"unknown hook {caller.name!r}{hint}: no hook specification has "
                "this name. Rename it, or mark it @hookimpl(optionalhook=True) if another plugin "
                "may define it.")

    def _collect(self, info: PluginInfo) -> None:
        """Call the plugin's registry hooks once (through the plugin manager, so hook-call
        monitoring sees them) and keep what they return."""
        provides = {}
        for category, hook_name in CATEGORIES.items():
            if any(impl.plugin is info.plugin
                   for impl in getattr(self.hook, hook_name).get_hookimpls()):
                provides[category] = _checked(self._call_one(info.plugin, hook_name), hook_name,
                                              info.distribution)
        info.provides, info.checked = provides, True

    def _call_one(self, plugin: Any, hook_name: str) -> Any:
        """``plugin``'s implementation of ``hook_name`` called through the plugin manager."""
        others = [p for p in self.get_plugins() if p is not plugin]
        results = self.subset_hook_caller(hook_name, remove_plugins=others)()
        return results[0] if results else None  # pluggy drops None results

    def add_hookspecs(self, module_or_class: Any) -> None:
        """Add hook specs; plugins already registered with an implementation whose arguments
        the new spec lacks are left out with that error (not the plugin adding the spec)."""
        for name, function in inspect.getmembers(module_or_class):
            if self.parse_hookspec_opts(module_or_class, name) is None:
                continue
            caller = getattr(self.hook, name, None)
            if caller is None or caller.has_spec():
                continue
            allowed = set(inspect.signature(function).parameters) - {"self"}
            for impl in caller.get_hookimpls():
                extra = sorted(set(impl.argnames) - allowed)
                if extra:
                    owner = next((i for i in self.infos.values() if i.plugin is impl.plugin),
                                 None)
                    exc = pluggy.PluginValidationError(
                        impl.plugin, f"hook {name!r} takes argument(s) {', '.join(extra)} that "
                        f"its specification does not have ({', '.join(sorted(allowed))}).")
                    if owner is None:
                        raise exc
                    self._fail(owner, exc)
        super().add_hookspecs(module_or_class)

    # -- lookups
    def distribution_of(self, plugin: Any) -> str:
        for info in self.infos.values():
            if info.plugin is plugin:
                return info.distribution
        return self.get_name(plugin) or repr(plugin)

    def provided(self, plugin: Any, category: str) -> dict[str, Any]:
        """What ``plugin``'s registry hook for ``category`` returned (called now for plugins
        registered without :meth:`register_plugin`)."""
        for info in self.infos.values():
            if info.plugin is plugin and info.checked:
                return info.provides.get(category, {})
        hook_name = CATEGORIES[category]
        if any(impl.plugin is plugin for impl in getattr(self.hook, hook_name).get_hookimpls()):
            return _checked(self._call_one(plugin, hook_name), hook_name,
                            self.distribution_of(plugin))
        return {}

    @property
    def failed(self) -> list[PluginInfo]:
        return [info for info in self.infos.values() if info.error is not None]


def _checked(provided: Any, hook_name: str, distribution: str) -> dict[str, Any]:
    if not isinstance(provided, dict) or not all(isinstance(k, str) for k in provided):
        raise MoxinError(f"Plugin {distribution!r} returned {type(provided).__name__} from "
                         f"{hook_name}(); a registry hook must return a dict {{name: factory}} "
                         "with string names.")
    return provided


def _load_entry_points(pm: MoxinPluginManager) -> None:
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
            pm.record_failure(name, dist, version, exc)
            continue
        pm.register_plugin(plugin, name=name, distribution=dist, version=version, check=False)
    pm.check_plugins()  # after all: a plugin may implement a hook another plugin specifies


def get_plugin_manager(load_entry_points: bool = True,
                       strict: bool | None = None) -> MoxinPluginManager:
    """Build a plugin manager with the hook specs and every installed ``moxin`` plugin.

    A plugin that fails to load is recorded in ``pm.infos`` with its distribution, version and
    error; the rest still load. ``strict`` (default: ``MOXIN_STRICT_PLUGINS=1`` in the
    environment) raises the error instead.
    """
    pm = MoxinPluginManager(strict=strict_from_environment() if strict is None else strict)
    if load_entry_points:
        _load_entry_points(pm)
    return pm


class Registry:
    """Name lookup over the registry hooks of one plugin manager.

    Each category is merged lazily on first use. A name two plugins register is an error when
    it is looked up (naming both distributions); every other name still resolves.
    """

    def __init__(self, pm: MoxinPluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()
        self._merged: dict[str, dict[str, Any]] = {}
        self._clashes: dict[str, dict[str, str]] = {}

    def provided_by(self, category: str) -> list[tuple[Any, dict[str, Any]]]:
        """``[(plugin, {name: factory})]`` for every plugin implementing the category's hook."""
        hook = getattr(self.pm.hook, CATEGORIES[category])
        return [(impl.plugin, self.pm.provided(impl.plugin, category))
                for impl in hook.get_hookimpls()]

    def category(self, category: str) -> dict[str, Any]:
        """The merged ``{name: factory}`` of one category (a name registered twice maps to the
        first distribution's factory here; :meth:`get` refuses it)."""
        if category not in CATEGORIES:
            raise MoxinError(f"Unknown registry category {category!r}; "
                             f"known: {', '.join(CATEGORIES)}.")
        if category not in self._merged:
            merged: dict[str, Any] = {}
            owner: dict[str, Any] = {}
            clashes: dict[str, str] = {}
            for plugin, provided in self.provided_by(category):
                for name, factory in provided.items():
                    if name in merged:
                        first = self.pm.distribution_of(owner[name])
                        second = self.pm.distribution_of(plugin)
                        clashes[name] = (
                            f"The {_NOUNS[category]} name {name!r} is registered twice: by "
                            f"distribution {first!r} and by distribution {second!r}. Uninstall "
                            "one of them or rename the entry in one plugin.")
                        continue
                    merged[name] = factory
                    owner[name] = plugin
            self._merged[category] = dict(sorted(merged.items()))
            self._clashes[category] = clashes
        return self._merged[category]

    def names(self, category: str) -> list[str]:
        return list(self.category(category))

    def get(self, category: str, name: str) -> Any:
        """Resolve ``name`` in ``category``; an unknown name lists the known ones."""
        entries = self.category(category)
        if name in self._clashes[category]:
            raise MoxinError(self._clashes[category][name])
        if name in entries:
            return entries[name]
        known = ", ".join(entries) or "(none)"
        message = f"Unknown {_NOUNS[category]} {name!r}. Known {category.replace('_', ' ')}: {known}."
        failed = self.pm.failed
        if failed:
            message += " These plugins failed to load and may provide it: " + "; ".join(
                f"{info.distribution} ({info.name}): {info.error.rstrip('.')}"
                for info in failed) + "."
            raise PluginLoadError(message)
        raise MoxinError(message + " Run `moxin plugins` to see what is installed.")


def describe_plugins(pm: MoxinPluginManager) -> list[dict[str, Any]]:
    """One JSON-able entry per plugin, loaded or failed, sorted by name."""
    entries = []
    for name, info in sorted(pm.infos.items()):
        entry: dict[str, Any] = {"name": name, "distribution": info.distribution,
                                 "version": info.version, "hooks": [], "provides": {},
                                 "error": info.error}
        if info.error is None and info.plugin is not None:
            entry["hooks"] = sorted(caller.name for caller in pm.get_hookcallers(info.plugin) or [])
            entry["provides"] = {category: sorted(provided)
                                 for category, provided in info.provides.items()}
        entries.append(entry)
    return entries
