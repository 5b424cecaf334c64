"""Builtin plugin: every event as one JSON line, for batch jobs and workflow engines.

Programs that drive ucore (cwltool, miniwdl, …) read these instead of scraping text; each line
has an ``event`` key (``stage.finish``, ``blob.download.progress``, …) and a ``time``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TextIO

from ucore.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.values.events import Event


class JsonLinesSink:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @hookimpl
    def ucore_event(self, event: Event) -> None:
        self.stream.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        self.stream.flush()
