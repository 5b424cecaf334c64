"""Builds the plugin manager ucore runs with: its hook specifications, the builtin plugins,
then the plugins installed under the ``ucore`` entry points.

Apart from :mod:`ucore.plugins.manager` because this is the one place that knows both the
specifications and the builtin plugins, which themselves name the session and the store.
"""

from __future__ import annotations

import importlib

from ucore import __version__
from ucore.plugins import hookspecs
from ucore.plugins.manager import Plugins

#: name -> module of the plugins the core always registers (blockable like any other).
BUILTIN = {
    "registry": "ucore.builtin.registry.plugin",
    "unpack": "ucore.builtin.unpack",
    "execute": "ucore.builtin.execute",
    "devices": "ucore.builtin.devices",
}


def get_plugin_manager(disabled: tuple[str, ...] = (), entry_points: bool = True) -> Plugins:
    """Specs, builtins, installed plugins; a plugin implementing a hook that does not exist
    (a misspelt name) is reported and skipped (:meth:`Plugins.drop_unknown_hooks`)."""
    plugins = Plugins(hookspecs, disabled)
    for name, module in BUILTIN.items():
        if not plugins.pm.is_blocked(name):
            plugins.register(importlib.import_module(module), name, "ucore (builtin)", __version__)
    if entry_points:
        plugins.load_entry_points()
    plugins.drop_unknown_hooks()
    return plugins
