"""Logging: structlog, configured once, imported only when something is actually logged.

Importing structlog costs about 40 ms (it pulls in asyncio), which would be most of
``ucore run``'s start-up budget; below the threshold a log call costs one comparison and
structlog is never loaded. Output goes to stderr so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import sys
from typing import Any

# The standard levels, without importing :mod:`logging` (7 ms) for four numbers.
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_state: dict[str, Any] = {"level": WARNING, "json": False, "configured": False}


def configure_logging(verbosity: int = 0, fmt: str = "console") -> None:
    """Set the threshold (WARNING, ``-v`` INFO, ``-vv`` DEBUG) and the format: ``json`` only
    when asked for, since a batch job's log is read by people as often as by programs (the
    error line stays one plain line either way)."""
    _state["level"] = max(DEBUG, WARNING - 10 * verbosity)
    _state["json"] = fmt == "json"
    _state["configured"] = False


def _structlog() -> Any:
    import structlog

    if not _state["configured"]:
        renderer: Any = (
            structlog.processors.JSONRenderer()
            if _state["json"]
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        )
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(_state["level"]),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=False,
        )
        _state["configured"] = True
    return structlog


def json_output() -> bool:
    return bool(_state["json"])


class Logger:
    """The subset of structlog's bound-logger API that ucore uses."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, level: int, event: str, kw: dict[str, Any]) -> None:
        if level >= _state["level"]:
            _structlog().get_logger().log(level, event, logger=self.name, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._log(DEBUG, event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log(INFO, event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log(WARNING, event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log(ERROR, event, kw)

    def enabled(self, level: int) -> bool:
        return bool(level >= _state["level"])


def get_logger(name: str) -> Logger:
    return Logger(name)
