"""Leases: locks made of files, for stores on filesystems where ``flock`` fails (NFS without a
lock manager).

A lease is an empty file ``PREFIX.KIND.HOST.PID.RANDOM`` that a process makes before it does
what the lock guards and removes afterwards. Two sides that must exclude each other (a run
and an ``rm``; a pull and a ``prune``) each make theirs first and look for the other's
second, so that of two that start at once at least one sees the other: no lock manager is
needed, only files that, once made, are seen by the next directory listing (as NFS's
close-to-open consistency gives).

A lease of a process of this host that is gone is ignored; one of another host, whose
processes cannot be seen from here, counts until it is a day old, like the other leftovers of
other hosts in the store.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from ucore.values.errors import store_error

#: This host in temporary and state names, so that nodes sharing a store (NFS) tell their own
#: leftovers from another node's live ones.
HOST = re.sub(r"[^A-Za-z0-9-]", "_", os.uname().nodename)[:64] or "host"
#: What a process on another host left (a partial download, a lease) is stale after this long.
STALE_FOREIGN = 24 * 3600


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still has ``pid`` (whoever owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}")


@contextlib.contextmanager
def held(directory: Path, prefix: str, dir_fd: Optional[int] = None) -> Iterator[str]:
    """Hold a lease named ``prefix`` in ``directory`` (or the directory ``dir_fd`` is open
    on, wherever it has been renamed to); yields its file name."""
    name = f"{prefix}.{HOST}.{os.getpid()}.{os.urandom(4).hex()}"
    where = name if dir_fd is not None else str(directory / name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        os.close(os.open(where, flags, 0o600, dir_fd=dir_fd))
    except OSError as exc:
        raise store_error(exc, f"making lease {name} in {directory}") from exc
    try:
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where, dir_fd=dir_fd)


def others(directory: Path, prefix: str, mine: str = "") -> list[str]:
    """The leases named ``prefix`` in ``directory`` that still count, other than ``mine``."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        if name == mine or not name.startswith(prefix + "."):
            continue
        m = _OWNER.fullmatch(name[len(prefix) + 1 :])
        if not m:
            continue
        if m["host"] == HOST:
            if pid_alive(int(m["pid"])):
                found.append(name)
        elif _recent(directory / name):
            found.append(name)
    return found


def _recent(path: Path) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime < STALE_FOREIGN
    except FileNotFoundError:
        return False
