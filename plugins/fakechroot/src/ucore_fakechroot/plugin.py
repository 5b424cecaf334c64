"""Hook implementations of ucore-fakechroot, loaded through the ``ucore`` entry-point group.

Registers the Fakechroot engines: ``fakechroot`` (udocker's F1), ``fakechroot-f2`` (F2),
``fakechroot-f3`` (F3) and ``fakechroot-f4`` (F4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ucore.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.plugins.registration import Registry


@hookimpl
def ucore_register_engines(register: Registry) -> None:
    from ucore_fakechroot import engine as e

    for engine in (
        e.FakechrootEngine,
        e.FakechrootLoaderEngine,
        e.FakechrootPatchedEngine,
        e.FakechrootLiveEngine,
    ):
        register(engine.name, engine)
