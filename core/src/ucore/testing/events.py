"""Recording ``ucore`` events in tests, from a session in this process or from the command.

A plugin's test wants to know what was published (a stage finished, a retry happened, devices
were bound), whether it drove ucore through :mod:`ucore.api` or ran the ``ucore`` command. Both
end up here in one form, each event's JSON form (:meth:`ucore.values.events.Event.to_json`, the same
``{"event": NAME, ...}`` objects ``--log-format json`` prints), so one assertion serves both.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ucore.values.events import Event


class EventRecorder:
    """Collects events; it is itself the callback :class:`ucore.api.Ucore` takes.

    ::

        recorder = EventRecorder()
        Ucore(store=tmp_path, on_event=recorder).pull(image)
        recorder.read(cli.ok("pull", "--log-format", "json", image).stderr)
        assert recorder.named("stage.finish")
    """

    def __init__(self) -> None:
        #: Every event recorded, oldest first, in its JSON form.
        self.events: list[dict[str, Any]] = []
        # Sessions publish from their download threads too.
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event.to_json())

    def read(self, output: str) -> list[dict[str, Any]]:
        """Record the JSON objects among the lines of a command's ``--log-format json``
        output (its stderr); the ones just read."""
        found = json_events(output)
        with self._lock:
            self.events.extend(found)
        return found

    def named(self, name: str) -> list[dict[str, Any]]:
        """The events whose ``event`` is ``name`` (``stage.finish``, ``http.retry``, …)."""
        return [e for e in self.events if e.get("event") == name]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


def json_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON objects among stderr lines (``--log-format json``), ignoring anything else."""
    events = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                events.append(obj)
    return events
