"""What engine plugins learned about this host, kept in the store between runs.

Probing an engine (running its binary, starting a trial container) costs tens of milliseconds
to seconds; a run must not pay for it each time. Each plugin keeps one JSON file in the store's
``cache/`` directory, keyed by what the answer depends on (a binary's path, size and mtime, the
kernel release). Best effort: a damaged file reads as empty, and a read-only store only means
probing again next time. Concurrent writers may lose each other's entries, never corrupt them
(each write replaces the file whole).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import subprocess

#: Seconds a probe may take before it counts as not running.
PROBE_TIMEOUT = 60


class ProbeCache:
    """One plugin's cache file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """Every entry; empty when the file is missing or damaged."""
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError, RecursionError):  # RecursionError: nested past json's limit
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Any:
        return self.load().get(key)

    def put(self, key: str, value: Any) -> None:
        """Set one entry (the others are kept)."""
        data = self.load()
        data[key] = value
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:  # a full disk: no half-written copy left behind
            with contextlib.suppress(OSError):
                tmp.unlink()


def run_probe(
    argv: list[str],
    env: Mapping[str, str],
    preexec: Optional[Callable[[], None]] = None,
) -> subprocess.CompletedProcess[str]:
    """Run an engine's probe (its binary's version, a trial) with exactly ``env``, no stdin and
    its output captured; RuntimeError (one line) when it cannot start or hangs."""
    import subprocess

    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            preexec_fn=preexec,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{argv[0]} does not run: {exc}") from None
