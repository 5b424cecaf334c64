"""Events published on the bus (the ``ucore_event`` hook).

Subscribers (the terminal progress display, the JSON-lines sink, a site's own monitoring plugin)
receive these frozen values. Each class has a dotted ``name`` that is also the ``event`` key of
its JSON form, so a batch script can filter on it without importing ucore.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    """The base of every event; subscribers tell them apart by ``name`` or by class."""

    name: ClassVar[str] = "event"
    #: When it happened (set on creation; not an argument, so subclasses add fields freely).
    time: float = field(default_factory=time.time, init=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines form: ``event`` (the name), ``time`` and the fields, as plain
        JSON values (anything else as its text)."""
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        return {"event": self.name, **data}


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class StageStarted(Event):
    """A stage (``pull``, ``fetch.manifest``, ``fetch.blobs``, ``load``, …) began."""

    name: ClassVar[str] = "stage.start"
    stage: str
    subject: str


@dataclass(frozen=True)
class StageFinished(Event):
    """A stage ended; ``seconds`` is its wall time, ``ok`` whether it succeeded."""

    name: ClassVar[str] = "stage.finish"
    stage: str
    subject: str
    seconds: float
    ok: bool = True


@dataclass(frozen=True)
class BlobStarted(Event):
    """A blob download is about to start (``done`` > 0 when resuming a partial download)."""

    name: ClassVar[str] = "blob.download.start"
    digest: str
    total: int
    done: int = 0
    media_type: str = ""


@dataclass(frozen=True)
class BlobProgress(Event):
    """Bytes of one blob received so far; throttled to a few per second per blob."""

    name: ClassVar[str] = "blob.download.progress"
    digest: str
    done: int
    total: int


@dataclass(frozen=True)
class BlobFinished(Event):
    """A blob is verified and published, or was already present (``cached``)."""

    name: ClassVar[str] = "blob.download.finish"
    digest: str
    total: int
    cached: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class Retrying(Event):
    """A request failed in a way worth retrying; ``delay`` seconds until the next attempt."""

    name: ClassVar[str] = "http.retry"
    url: str
    reason: str
    attempt: int
    delay: float


@dataclass(frozen=True)
class DevicesBound(Event):
    """A device provider bound devices for a run: ``report`` says what (driver version,
    devices, libraries, the discovery source); also kept in the container's ``devices.json``."""

    name: ClassVar[str] = "run.devices"
    kind: str
    report: dict[str, Any]
