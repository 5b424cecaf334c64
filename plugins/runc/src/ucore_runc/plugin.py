"""Hook implementations of ucore-runc, loaded through the ``ucore`` entry-point group.

Registers the rootless OCI runtime engines: ``crun`` and ``runc`` (udocker's R1), and
``runc-proot``, which only explains why udocker's R2/R3 are not provided.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ucore.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.plugins.registration import Registry


@hookimpl
def ucore_register_engines(register: Registry) -> None:
    from ucore_runc.engine import CrunEngine, RuncEngine, RuncProotEngine

    for engine in (CrunEngine, RuncEngine, RuncProotEngine):
        register(engine.name, engine)
