"""Builtin plugin "devices": hands a run's device requests to the providers of their kinds.

Each provider sees the run spec as the providers before it left it (so two that extend
``LD_LIBRARY_PATH`` both keep their directories), and what they bound goes into the run's
record: ``devices.json`` in the container directory and a ``run.devices`` event. A run without
requests returns at once, before anything is imported.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Optional

from ucore.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, Preparation, RunSpec

#: The run's record of what was bound, in the container directory (outside its root).
RECORD = "devices.json"


@hookimpl
def ucore_prepare(container: Container, spec: RunSpec, session: Session) -> Optional[Preparation]:
    if not spec.requests:
        return None
    from ucore.plugins.devices import providers
    from ucore.values.model import DeviceNode, Mount

    known = providers(session)
    mounts: list[Mount] = []
    nodes: list[DeviceNode] = []
    env = dict(spec.env)
    added: dict[str, str] = {}
    record: dict[str, Any] = {}
    for kind in dict.fromkeys(r.kind for r in spec.requests):
        asked = [r for r in spec.requests if r.kind == kind]
        so_far = spec._replace(env=tuple(env.items()))
        result = known.provider(kind).prepare(container, so_far, asked)
        if not result:
            continue
        mounts += result.get("mounts") or ()
        nodes += result.get("devices") or ()
        for name, value in dict(result.get("env") or {}).items():
            env[name] = added[name] = value
        if result.get("report"):
            record[kind] = result["report"]
            if session.listening:  # the events module (dataclasses) costs 4 ms to import
                from ucore.values.events import DevicesBound

                session.emit(DevicesBound(kind=kind, report=result["report"]))
    if record and container.location is None:
        from ucore.values.errors import StoreError

        with contextlib.suppress(StoreError):  # a store shared read-only still runs
            session.store.write_json_atomic(container.dir / RECORD, record)
    return {"mounts": mounts, "devices": nodes, "env": added}
