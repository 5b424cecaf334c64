"""Builtin plugin: per-layer progress bars on a terminal.

Registered only when stderr is a terminal, so batch jobs never receive escape sequences. It
redraws its block of lines in place at most ten times a second.
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO

from ucore.plugins.hookspecs import hookimpl
from ucore.values.events import BlobFinished, BlobProgress, BlobStarted, Event, StageFinished

_REDRAW = 0.1


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


class TerminalProgress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.rows: dict[str, list[int | str]] = {}
        self.drawn = 0
        self.last = 0.0

    @hookimpl
    def ucore_event(self, event: Event) -> None:
        if isinstance(event, BlobStarted):
            self.rows[event.digest] = [event.done, event.total, "downloading"]
        elif isinstance(event, BlobProgress) and event.digest in self.rows:
            self.rows[event.digest][0] = event.done
        elif isinstance(event, BlobFinished):
            state = "already present" if event.cached else "done"
            self.rows[event.digest] = [event.total, event.total, state]
            self.draw(force=True)
            return
        elif isinstance(event, StageFinished) and event.stage in ("pull", "load"):
            self.draw(force=True)
            verb = "pulled" if event.stage == "pull" else "loaded"
            outcome = f"{verb} {event.subject} in {event.seconds:.1f}s" if event.ok else "failed"
            self.stream.write(f"{outcome}\n")
            self.stream.flush()
            self.rows.clear()
            self.drawn = 0
            return
        else:
            return
        self.draw()

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < _REDRAW:
            return
        self.last = now
        width = max(40, shutil.get_terminal_size((80, 24)).columns - 1)
        bar_width = max(10, width - 50)
        lines = []
        for digest, (done, total, state) in self.rows.items():
            assert isinstance(done, int) and isinstance(total, int)
            fraction = done / total if total else 1.0
            filled = int(bar_width * fraction)
            bar = "#" * filled + "-" * (bar_width - filled)
            short = digest.split(":")[-1][:12]
            size = f"{human(done)}/{human(total)}"
            lines.append(f"{short} [{bar}] {size:>19} {state}"[:width])
        out = "\x1b[F" * self.drawn + "".join(f"\x1b[2K{line}\n" for line in lines)
        self.stream.write(out)
        self.stream.flush()
        self.drawn = len(lines)
