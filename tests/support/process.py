"""Running a test's helper command in a session of its own, so that a timeout ends all of it.

A hung ``mpirun`` or ``unshare`` leaves children (ranks, a chrooted shell) that would outlive
the test and load the rest of the suite; they share the command's new session and process
group, which a timeout kills whole.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional


def run_group(
    argv: Sequence[str],
    timeout: float,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
) -> subprocess.CompletedProcess[str]:
    """``argv`` with no stdin and its output captured as text; on timeout its whole process
    group is killed and :class:`subprocess.TimeoutExpired` raised."""
    with subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def in_namespaces(script: str, *args: str) -> list[str]:
    """The command that runs ``sh -c SCRIPT sh ARGS...`` as the first process of a private
    mount and pid namespace (root only): its mounts stay out of the host's, and every process
    it starts ends with it (``--kill-child``), however a test ends."""
    return [
        "unshare",
        "--mount",
        "--propagation=private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        "/bin/sh",
        "-c",
        script,
        "sh",
        *args,
    ]
