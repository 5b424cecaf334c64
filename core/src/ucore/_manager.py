"""Builds the plugin manager: hook specs, builtin plugins, then the ``ucore`` entry points.

There is no module-global manager, so tests and embedding programs get independent ones. A
plugin that fails to import is reported (``ucore plugins``) and skipped, never fatal: a site's
broken GPU plugin must not stop a user from pulling images.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from ucore import __version__, hookspecs
from ucore.log import get_logger

log = get_logger(__name__)

ENTRY_POINT_GROUP = "ucore"
#: name -> module of the plugins the core always registers (blockable like any other).
BUILTIN = {
    "registry": "ucore.builtin.registry.plugin",
    "unpack": "ucore.builtin.unpack.plugin",
    "execute": "ucore.builtin.execute",
}


class Plugins:
    """The plugin manager plus what ``ucore plugins`` reports: versions, sources, failures."""

    def __init__(self, disabled: tuple[str, ...] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = tuple(disabled)
        self.sources: dict[str, tuple[str, str]] = {}
        self.failed: dict[str, str] = {}
        for name in self.disabled:
            self.pm.set_blocked(name)

    def register(self, plugin: Any, name: str, source: str, version: str) -> None:
        if self.pm.is_blocked(name):
            return
        self.pm.register(plugin, name=name)
        self.sources[name] = (source, version)

    def load_builtins(self) -> None:
        for name, module in BUILTIN.items():
            if not self.pm.is_blocked(name):
                self.register(importlib.import_module(module), name, "ucore (builtin)", __version__)

    def load_entry_points(self) -> None:
        if sys.version_info >= (3, 10):
            eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        else:  # pragma: no cover - Python 3.9's entry_points() returns a dict
            eps = list(metadata.entry_points().get(ENTRY_POINT_GROUP, []))
        for ep in eps:
            if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ep.value.split(".")[0]
            try:
                module: ModuleType = ep.load()
                self.register(module, ep.name, dist_name, _version(module, dist))
            except Exception as exc:  # noqa: BLE001 - any failure of a third-party import
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self.failed[ep.name] = reason
                log.warning("plugin failed to load and was skipped", plugin=ep.name, error=reason)

    def describe(self) -> list[dict[str, Any]]:
        """One entry per plugin: name, distribution, version, hooks it implements, status."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            source, version = self.sources.get(name, (getattr(plugin, "__name__", "?"), "?"))
            hooks = sorted(
                caller.name
                for caller in self.pm.get_hookcallers(plugin) or []
                if not caller.name.startswith("_")
            )
            rows.append(
                {
                    "name": name,
                    "distribution": source,
                    "version": version,
                    "hooks": hooks,
                    "status": "loaded",
                }
            )
        rows.extend(
            {"name": name, "distribution": "?", "version": "?", "hooks": [], "status": "blocked"}
            for name in self.disabled
        )
        rows.extend(
            {
                "name": name,
                "distribution": "?",
                "version": "?",
                "hooks": [],
                "status": f"failed: {reason}",
            }
            for name, reason in self.failed.items()
        )
        return rows


def _version(module: ModuleType, dist: Any) -> str:
    if dist is not None:
        return str(dist.version)
    return str(getattr(module, "__version__", "?"))


def get_plugin_manager(disabled: tuple[str, ...] = (), entry_points: bool = True) -> Plugins:
    """Specs, builtins, installed plugins; ``check_pending`` catches misspelt hook names."""
    plugins = Plugins(disabled)
    plugins.load_builtins()
    if entry_points:
        plugins.load_entry_points()
    plugins.pm.check_pending()
    return plugins
