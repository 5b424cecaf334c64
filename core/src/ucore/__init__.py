"""ucore: pull Docker/OCI images and run them as an ordinary user.

The core is deliberately small: it owns the store, the hook specifications and the event bus;
registries, unpackers and execution engines are plugins (some of them builtin). Its layers,
each importing only those before it: :mod:`ucore.values` (plain values and errors),
:mod:`ucore.storage` (the store, images, containers), :mod:`ucore.plugins` (the hooks and what
loads plugins), :mod:`ucore.running` (the run path); above them the :mod:`ucore.session` that
calls the hooks, the builtin plugins (:mod:`ucore.builtin`), the Python API (:mod:`ucore.api`)
and the command line (:mod:`ucore.cli`, :mod:`ucore.commands`).
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

#: From the project's one VERSION file (a link to it here, a copy in a built distribution),
#: so that the core and its plugins are released at one version.
with open(_os.path.join(_os.path.dirname(__file__), "VERSION"), encoding="ascii") as _file:
    __version__ = _file.read().strip()


def _reexport(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` (PEP 562) for ``package``, re-exporting each
    name from the submodule ``names`` maps it to, imported on first use: a subpackage then
    offers its public names in one place without loading every module (attrs, the event
    values) when any one of them is imported, which ``ucore run``'s start-up relies on."""

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
