"""Hook implementations of ucore-proot, loaded through the ``ucore`` entry-point group.

Registers the PRoot engines: ``proot`` (udocker's P1) and ``proot-noseccomp`` (P2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ucore.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.plugins.registration import Registry


@hookimpl
def ucore_register_engines(register: Registry) -> None:
    from ucore_proot.engine import ProotEngine, ProotNoSeccompEngine

    register(ProotEngine.name, ProotEngine)
    register(ProotNoSeccompEngine.name, ProotNoSeccompEngine)
