"""Hook implementations of ucore-singularity, loaded through the ``ucore`` entry-point group.

Registers the Apptainer/Singularity engine ``singularity`` (udocker's S1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ucore.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.plugins.registration import Registry


@hookimpl
def ucore_register_engines(register: Registry) -> None:
    from ucore_singularity.engine import SingularityEngine

    register(SingularityEngine.name, SingularityEngine)
