"""Root and ``-u`` emulation for the F modes with Debian's fakeroot.

libfakechroot changes paths, not identities: alone, every process runs as the invoking user and
``id -u`` says so. libfakeroot, preloaded before it (so that its calls reach the files through
libfakechroot's translation; the other order made a shell's second ``exec`` fail with ENOENT,
measured), answers ``getuid`` and ``stat`` with the
identity asked for (root by default, as every other engine emulates it; ``-u UID[:GID]``
through ``FAKEROOTUID`` and its siblings) and remembers ``chown``/``chmod`` in the ``faked``
daemon, so package managers inside work as in ``fakeroot``. The daemon's table of fake owners is
kept in the container directory between runs (``--save-file`` / ``--load``), as
``fakeroot -s``/``-i`` do.

What it cannot do: real permission checks stay the invoking user's (a file the user cannot
read stays unreadable to "root"), set-id programs run as the user, and statically linked
programs see the real ids. libfakeroot is loaded by the container's glibc, so it must fit it
like libfakechroot; where none fits (or ``UCORE_FAKEROOT_SO=none``), the F modes run as the
invoking user and refuse any other ``-u``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Optional

from ucore.running import spawn

#: How long ``faked`` may take to save its table and exit after SIGTERM.
_STOP_WAIT = 5.0


class Fakeroot(NamedTuple):
    """A libfakeroot and the daemon that goes with it (the SysV message-queue flavour)."""

    library: str
    faked: str


def locate(configured: Optional[str], multiarch: str) -> tuple[Optional[Fakeroot], str]:
    """(the pair, or None and why): ``configured`` (a library path, or ``none``) first,
    then the host's Debian package."""
    if configured and configured.strip().lower() == "none":
        return None, "turned off (UCORE_FAKEROOT_SO=none)"
    library = configured or f"/usr/lib/{multiarch}/libfakeroot/libfakeroot-sysv.so"
    if not os.path.isfile(library):
        return None, f"no libfakeroot ({library}): install the Debian package fakeroot"
    search = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/bin:/bin"
    faked = spawn.find_program("faked-sysv", search) or spawn.find_program("faked", search)
    if faked is None:
        return None, "no faked-sysv on PATH (Debian package fakeroot)"
    return Fakeroot(library, faked), ""


def environment(key: str, uid: int, gid: int) -> dict[str, str]:
    """What libfakeroot reads: the daemon's key and the identity to show."""
    env = {"FAKEROOTKEY": key}
    for kind in ("", "E", "S", "F"):
        env[f"FAKEROOT{kind}UID"] = str(uid)
        env[f"FAKEROOT{kind}GID"] = str(gid)
    return env


@contextlib.contextmanager
def daemon(faked: str, table: Optional[Path]) -> Iterator[str]:
    """A ``faked`` for one run, loading and saving ``table`` when given; yields its key."""
    argv = [faked]
    stdin = None
    # each run's daemon saves to a file of its own, renamed over the table once it is
    # complete: runs of one container at once (a job array) never interleave their writes
    saved = table.with_name(f".{table.name}.{os.getpid()}") if table is not None else None
    if table is not None and saved is not None:
        argv += ["--save-file", str(saved)]
        with contextlib.suppress(OSError):
            stdin = os.open(table, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            argv.append("--load")
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    actions = [(os.POSIX_SPAWN_DUP2, wfd, 1)]
    if stdin is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stdin, 0))
    try:
        starter = os.posix_spawn(faked, argv, _daemon_env(), file_actions=actions)
    finally:
        os.close(wfd)
        if stdin is not None:
            os.close(stdin)
    line = _read_line(rfd)
    os.waitpid(starter, 0)  # faked forks the daemon, prints "KEY:PID" and exits
    key, _, pid_text = line.strip().partition(":")
    if not key.isdigit() or not pid_text.isdigit():
        raise OSError(f"{faked} printed {line.strip()!r}, not KEY:PID")
    pid = int(pid_text)
    try:
        yield key
    finally:
        stopped = _stop(pid)
        if table is not None and saved is not None:
            with contextlib.suppress(OSError):
                if stopped:
                    os.replace(saved, table)
                else:  # still writing: the table as it was is better than half of one
                    os.unlink(saved)


def _daemon_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath)}


def _read_line(fd: int) -> str:
    data = b""
    try:
        while not data.endswith(b"\n") and len(data) < 256:
            chunk = os.read(fd, 256)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode("ascii", "replace")


def _stop(pid: int) -> bool:
    """SIGTERM, on which faked saves its table, then wait for it to be gone (False: it was
    still there when the wait ended)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_WAIT
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.002)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    """Running, not gone and not a zombie (its new parent may be slow to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"
