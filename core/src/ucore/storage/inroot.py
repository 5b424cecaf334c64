"""Reading and naming paths inside a container root on the host side, as ``chroot`` would.

The run pipeline looks into the image before anything runs: ``/etc/passwd`` for ``-u NAME``,
the working directory, volume targets, the command. Each of those names comes from the image and
may be a symlink planted to reach the host (``/etc/passwd -> /home/me/.ssh/id_rsa``), so every
component is opened relative to its parent directory with ``O_NOFOLLOW`` and links are resolved
here: an absolute target restarts at the root, ``..`` at the root stays there, and at most
:data:`MAX_LINKS` links are followed (safety rules 1 and 9).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from ucore.storage.rootfs import DIR_FLAGS, MAX_LINKS

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: Where the engines show host objects, not the image's: the host's processes (``/proc/self/fd/N``
#: names a host directory), kernel state and devices.
PSEUDO = ("/proc", "/sys", "/dev")


class Walk(NamedTuple):
    """Where a path led inside the root."""

    #: Canonical and absolute inside the root: no symlinks, no ``..``.
    path: str
    #: How many trailing components of ``path`` do not exist (0: all of it exists).
    missing: int
    #: ``st_mode`` of what ``path`` names, when it exists.
    mode: Optional[int]
    #: The missing tail lies below a file: nothing can ever be made there.
    blocked: bool = False


def resolve(root: Path, path: str) -> Walk:
    """Canonical form of ``path`` inside ``root``; a missing tail is kept as written."""
    return _walk(root, path, None)


def under(path: str, top: str) -> bool:
    """Whether canonical ``path`` is ``top`` or below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def read_file(root: Path, path: str, limit: int) -> Optional[bytes]:
    """At most ``limit`` bytes of a regular file inside ``root``, or None when it is missing or
    not a regular file. Anything else is never opened: opening a FIFO planted as
    ``/etc/passwd`` releases whoever waits to write to it, and opening a device node (a
    privileged unpack makes them) can act on hardware, such as starting a watchdog."""
    box: list[Optional[bytes]] = []
    _walk(root, path, lambda fd, name: box.append(_read(fd, name, limit)))
    return box[0] if box else None


def open_dir(top: Path | int, names: Sequence[str]) -> int:
    """A new descriptor of the directory ``names`` lead to from ``top`` (a path, or a
    directory descriptor, which stays open), each opened without following a symbolic link:
    for a canonical path in a root, which must not lead out of it whatever was planted."""
    fd = os.dup(top) if isinstance(top, int) else os.open(top, DIR_FLAGS)
    try:
        for name in names:
            fd = _swap(fd, os.open(name, DIR_FLAGS, dir_fd=fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(root: Path, path: str) -> str:
    """Create what is missing of directory ``path`` inside ``root`` (mode 0755, as Docker makes
    a missing ``WorkingDir``); returns its canonical path."""
    walk = resolve(root, path)
    if walk.missing:
        parts = walk.path.strip("/").split("/")
        cut = len(parts) - walk.missing
        fd = open_dir(root, parts[:cut])  # canonical: no links on the way
        try:
            for name in parts[cut:]:
                os.mkdir(name, 0o755, dir_fd=fd)
                fd = _swap(fd, os.open(name, DIR_FLAGS, dir_fd=fd))
        finally:
            os.close(fd)
    return walk.path


def _swap(old: int, new: int) -> int:
    os.close(old)
    return new


def _read(dir_fd: int, name: str, limit: int) -> Optional[bytes]:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since it was looked at
            return None
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(1 << 16, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _missing(names: list[str], rest: list[str], blocked: bool = False) -> Walk:
    """A walk that stopped where nothing exists (or, ``blocked``, at a file used as a
    directory): the remainder is normalised as written."""
    full = posixpath.normpath("/" + "/".join([*names, *rest]))
    parts = full.strip("/").split("/") if full != "/" else []
    common = 0
    while common < min(len(parts), len(names)) and parts[common] == names[common]:
        common += 1
    return Walk(full, len(parts) - common, None, blocked)


def _walk(root: Path, path: str, leaf: Optional[Callable[[int, str], None]]) -> Walk:
    pending = posixpath.normpath("/" + path).split("/")[::-1]
    names: list[str] = []
    fds = [os.open(root, DIR_FLAGS)]
    links = 0
    try:
        while pending:
            comp = pending.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if names:
                    names.pop()
                    os.close(fds.pop())
                continue
            try:
                mode = os.stat(comp, dir_fd=fds[-1], follow_symlinks=False).st_mode
            except FileNotFoundError:
                rest = [comp, *reversed(pending)]
                if ".." not in rest:
                    return _missing(names, rest)
                # ``missing/..`` cancels out, as Docker's FollowSymlinkInScope resolves it:
                # what follows may exist after all, so the walk goes on from here
                pending = posixpath.normpath("/".join(rest)).split("/")[::-1]
                continue
            if stat.S_ISLNK(mode):
                links += 1
                if links > MAX_LINKS:
                    raise OSError(f"too many levels of symbolic links in {path!r}")
                target = os.readlink(comp, dir_fd=fds[-1])
                if target.startswith("/"):
                    for fd in fds[1:]:
                        os.close(fd)
                    del fds[1:]
                    names.clear()
                pending.extend(target.split("/")[::-1])
                continue
            last = not any(p not in ("", ".") for p in pending)
            if stat.S_ISDIR(mode) and last:
                # Not opened: nothing below it is looked at, and it may be a mount point a
                # running PRoot made for a bind (mode 0, until that run ends).
                return Walk("/" + "/".join([*names, comp]), 0, stat.S_IFDIR)
            if stat.S_ISDIR(mode):
                fds.append(os.open(comp, DIR_FLAGS, dir_fd=fds[-1]))
                names.append(comp)
                continue
            if not last:  # a file used as a directory
                return _missing([*names, comp], list(reversed(pending)), blocked=True)
            if leaf is not None and stat.S_ISREG(mode):
                leaf(fds[-1], comp)
            return Walk("/" + "/".join([*names, comp]), 0, mode)
        return Walk("/" + "/".join(names), 0, stat.S_IFDIR)
    finally:
        for fd in fds:
            os.close(fd)
