"""Checks every plugin distribution's tests run first: its entry point resolves, and ``ucore``
discovers it, reports its version and loads it without error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata


def check_registration(name: str, module: str, distribution: str) -> dict[str, object]:
    """Assert that entry point ``name`` of group ``ucore`` loads ``module`` and that
    ``ucore plugins --json`` lists it as loaded from ``distribution``; returns that row."""
    if sys.version_info >= (3, 10):
        eps = list(metadata.entry_points(group="ucore"))
    else:  # pragma: no cover - Python 3.9's entry_points() returns a dict
        eps = list(metadata.entry_points().get("ucore", []))
    [ep] = [ep for ep in eps if ep.name == name]
    assert ep.load().__name__ == module
    proc = subprocess.run(
        [sys.executable, "-m", "ucore", "plugins", "--json"],
        env={**os.environ, "UCORE_DIR": os.devnull + ".nonexistent"},
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    row: dict[str, object] = rows[name]
    assert row["status"] == "loaded", row
    assert row["distribution"] == distribution, row
    assert row["version"] == metadata.version(distribution), row
    return row
