"""The plugin manager: pluggy's, plus what ``ucore plugins`` reports (versions, sources,
failures), and the ``ucore`` entry points read without :mod:`importlib.metadata`.

There is no module-global manager, so tests and embedding programs get independent ones. A
plugin that fails to import is reported (``ucore plugins``) and skipped, never fatal: a site's
broken GPU plugin must not stop a user from pulling images. Which specifications and builtin
plugins a manager holds is :mod:`ucore.plugins.loading`'s business: this module knows neither,
so the session and the hook specifications (which name each other's types) never import it
back.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any, NamedTuple

import pluggy

from ucore.log import get_logger

log = get_logger(__name__)

ENTRY_POINT_GROUP = "ucore"


class Plugins:
    """The plugin manager plus what ``ucore plugins`` reports: versions, sources, failures."""

    def __init__(self, specs: ModuleType, disabled: tuple[str, ...] = ()) -> None:
        """``specs``: the module of hook specifications, whose ``PROJECT`` names the project."""
        self.pm = pluggy.PluginManager(specs.PROJECT)
        self.pm.add_hookspecs(specs)
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

    def load_entry_points(self) -> None:
        for ep in entry_points(ENTRY_POINT_GROUP):
            if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                continue
            try:
                module, _, attr = ep.value.partition(":")
                plugin: Any = importlib.import_module(module.strip())
                for part in filter(None, attr.strip().split(".")):
                    plugin = getattr(plugin, part)
                self.register(plugin, ep.name, ep.distribution, ep.version)
            except Exception as exc:  # noqa: BLE001 - any failure of a third-party import
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self.failed[ep.name] = reason
                log.warning("plugin failed to load and was skipped", plugin=ep.name, error=reason)

    def drop_unknown_hooks(self) -> None:
        """Unregister every plugin that implements a hook no specification names, as a plugin
        that fails to import is: ``ucore plugins`` says which and why, and the others work.
        pluggy's ``check_pending`` would raise instead, failing every command for one
        third-party typo."""
        unknown: dict[str, list[str]] = {}
        for name, caller in vars(self.pm.hook).items():
            if name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if not impl.optionalhook:
                    unknown.setdefault(impl.plugin_name, []).append(name)
        for plugin_name, hooks in unknown.items():
            self.pm.unregister(name=plugin_name)
            self.sources.pop(plugin_name, None)
            reason = f"implements no such hook {', '.join(sorted(hooks))} (misspelt?)"
            self.failed[plugin_name] = reason
            log.warning("plugin skipped", plugin=plugin_name, error=reason)

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


class EntryPoint(NamedTuple):
    name: str
    value: str
    distribution: str
    version: str


def entry_points(group: str) -> list[EntryPoint]:
    """The entry points of ``group``, read from the ``entry_points.txt`` of the distributions
    on ``sys.path`` (the first of a name wins, as with :mod:`importlib.metadata`).

    Read directly because importing :mod:`importlib.metadata` costs ~10 ms of every
    ``ucore run``; a scan of the path entries costs about a millisecond.
    """
    found: list[EntryPoint] = []
    seen: set[str] = set()
    header = f"[{group}]"
    for base in sys.path:
        try:
            names = sorted(os.listdir(base or "."))
        except OSError:
            continue
        for entry in names:
            if not entry.endswith((".dist-info", ".egg-info")):
                continue
            # ``NAME-VERSION.dist-info`` (``NAME.egg-info`` for an old-style develop install)
            key = _normalize(entry.rsplit(".", 1)[0].split("-", 1)[0])
            if key in seen:
                continue
            seen.add(key)
            info = os.path.join(base or ".", entry)
            try:
                with open(os.path.join(info, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            if header in text:
                dist, version = _dist_name(info)
                pairs = _section(text, header)
                found.extend(EntryPoint(n, v, dist or key, version) for n, v in pairs)
    return found


def _normalize(name: str) -> str:
    """A distribution name as the packaging tools compare them (PEP 503)."""
    return "-".join(filter(None, name.replace("_", "-").replace(".", "-").split("-"))).lower()


def _dist_name(info: str) -> tuple[str, str]:
    """``Name`` and ``Version`` from a dist-info's METADATA (or an egg-info's PKG-INFO)."""
    name = version = ""
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(info, filename), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Name:"):
                        name = line[5:].strip()
                    elif line.startswith("Version:"):
                        version = line[8:].strip()
                    elif not line.strip() or (name and version):
                        break
        except OSError:
            continue
        break
    return name, version or "?"


def _section(text: str, header: str) -> list[tuple[str, str]]:
    pairs = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == header
        elif inside and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            pairs.append((name.strip(), value.strip()))
    return pairs
