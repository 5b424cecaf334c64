"""Hook implementations of ucore-bwrap, loaded through the ``ucore`` entry-point group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ucore.plugins import hookimpl

if TYPE_CHECKING:
    from ucore.plugins import Registry


@hookimpl
def ucore_register_engines(register: Registry) -> None:
    from ucore_bwrap.engine import BwrapEngine

    register(BwrapEngine.name, BwrapEngine)
