"""Read-only volumes for engines that can only bind read-write (PRoot, Fakechroot).

Such an engine gets, for each ``:ro`` mount, a *view* of the host path instead: an empty
directory (or file) under a private scratch directory, onto which the child process, just
before it starts the engine, bind-mounts the host path and remounts it read-only, in a mount
namespace of its own. The kernel then refuses every write, whatever the engine does, and the
host never sees the mounts. An unprivileged user needs a user namespace for this (mapping only
itself, so ids and permissions stay what they are); where the host forbids user namespaces
the run stops with a clear message rather than silently mounting read-write.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

from ucore.values.errors import UsageError
from ucore.values.model import Mount

if TYPE_CHECKING:
    import ctypes

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
#: statvfs flag -> mount flag for what a bind remount must keep (the kernel locks them in a
#: user namespace): nosuid, nodev, noexec, noatime, nodiratime, relatime.
_KEEP = ((2, 2), (4, 4), (8, 8), (1024, 1024), (2048, 2048), (4096, 1 << 21))


class Views(NamedTuple):
    """``mounts`` with read-only ones pointing at their views; ``enter`` makes the views (run
    it in the child, before ``exec``)."""

    mounts: tuple[Mount, ...]
    pairs: tuple[tuple[str, str], ...] = ()

    def enter(self) -> None:
        if self.pairs:
            _namespace()
            for source, view in self.pairs:
                _bind_readonly(source, view)


@contextlib.contextmanager
def views(mounts: Sequence[Mount], scratch: Path) -> Iterator[Views]:
    """Views for the read-only ``mounts``, in a directory under ``scratch`` removed afterwards."""
    if not any(m.readonly for m in mounts):
        yield Views(tuple(mounts))
        return
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    # not tempfile.mkdtemp, nor shutil.rmtree below: importing them costs a run 7 ms
    base = scratch / f"ro-{os.getpid()}-{os.urandom(6).hex()}"
    base.mkdir(mode=0o700)
    try:
        out: list[Mount] = []
        pairs = []
        for i, m in enumerate(mounts):
            if not m.readonly:
                out.append(m)
                continue
            view = base / str(i)
            if os.path.isdir(m.source):
                view.mkdir()
            else:
                view.touch()
            pairs.append((m.source, str(view)))
            out.append(m._replace(source=str(view)))
        yield Views(tuple(out), tuple(pairs))
    finally:
        _remove_views(base)


def _remove_views(base: Path) -> None:
    """The views are empty directories and empty files, unmounted with the child's namespace."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    os.rmdir(entry.path)
                else:
                    os.unlink(entry.path)
        os.rmdir(base)


def _libc() -> ctypes.CDLL:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _namespace() -> None:
    uid, gid = os.getuid(), os.getgid()
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS | (_CLONE_NEWUSER if uid else 0)) != 0:
        err = _errno()
        raise UsageError(
            "read-only volumes (:ro) need a user namespace with this engine, and this host"
            f" refuses one ({os.strerror(err)}); mount them :rw or use another engine"
        )
    if uid:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    _mount(libc, None, "/", _MS_REC | _MS_PRIVATE, "/")


def _bind_readonly(source: str, view: str) -> None:
    libc = _libc()
    _mount(libc, source, view, _MS_BIND | _MS_REC, source)
    have = os.statvfs(view).f_flag
    keep = sum(flag for st, flag in _KEEP if have & st)
    _mount(libc, None, view, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | keep, source)


def _mount(libc: ctypes.CDLL, source: Optional[str], target: str, flags: int, what: str) -> None:
    src = source.encode() if source is not None else None
    if libc.mount(src, target.encode(), None, flags, None) != 0:
        raise UsageError(f"cannot mount {what} read-only: {os.strerror(_errno())}")
