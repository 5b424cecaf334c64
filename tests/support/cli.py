"""The ``ucore`` command as the tests run it.

The command wrapper and the store checks live in :mod:`ucore.testing.cli`, the JSON-lines reader
in :mod:`ucore.testing.events`: engine plugins outside this repository use them too. This module
adds what only this repository's tests need.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from pathlib import Path

from ucore.testing.cli import (
    Ucore,
    assert_error_line,
    check_store,
    describe,
    engine_container,
    installed_engines,
    on_terminal,
    usable_engine,
)
from ucore.testing.events import json_events

__all__ = [
    "Ucore",
    "assert_error_line",
    "check_store",
    "describe",
    "engine_container",
    "installed_engines",
    "json_events",
    "kill",
    "on_terminal",
    "usable_engine",
    "write_docker_config",
]


def kill(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Signal a ucore subprocess we started, by its pid, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.communicate(timeout=30)


def write_docker_config(directory: Path, registry: str, username: str, password: str) -> Path:
    """A Docker ``config.json`` with Basic credentials for ``registry`` (as ``docker login``
    writes it), in ``directory`` (``~/.docker`` or ``$DOCKER_CONFIG``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    path.chmod(0o600)
    return path
