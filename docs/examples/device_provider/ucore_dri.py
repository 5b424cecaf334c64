"""A device provider: the host's DRM render nodes (``/dev/dri/renderD128``…), which Mesa and
oneAPI use for GPU compute and video, bound with ``--device dri[=renderD128,…]``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from ucore.plugins import hookimpl
from ucore.values import DeviceError, DeviceNode

if TYPE_CHECKING:
    from ucore.plugins import Registry
    from ucore.session import Session
    from ucore.values import Container, DeviceRequest, RunSpec

DIRECTORY = "/dev/dri"


class RenderNodes:
    kind: ClassVar[str] = "dri"
    aliases: ClassVar[tuple[str, ...]] = ("render",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def found(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(DIRECTORY) if n.startswith("renderD"))
        except OSError:
            return []

    def select(self, requests: Sequence[DeviceRequest]) -> list[str]:
        """The nodes asked for: all of them without a selection; DeviceError (exit 9) for one
        this host lacks, so nothing starts."""
        found, chosen = self.found(), []
        for request in requests:
            if request.selection == "none":
                continue
            wanted = found if request.selection in ("", "all") else request.selection.split(",")
            for name in wanted:
                if name not in found:
                    raise DeviceError(f"{request.origin}: no {DIRECTORY}/{name} on this host")
                chosen.append(name)
        return sorted(set(chosen))

    def prepare(
        self, container: Container, spec: RunSpec, requests: Sequence[DeviceRequest]
    ) -> Optional[dict[str, Any]]:
        chosen = self.select(requests)
        if not chosen:
            return None
        return {
            "devices": [DeviceNode(f"{DIRECTORY}/{name}") for name in chosen],
            "report": {"nodes": chosen},
        }

    def report(self, requests: Sequence[DeviceRequest]) -> dict[str, Any]:
        found = self.found()
        return {"nodes": found, "summary": [f"render nodes: {' '.join(found) or 'none'}"]}


@hookimpl
def ucore_register_devices(register: Registry) -> None:
    register(RenderNodes.kind, RenderNodes)
