"""Paths inside a container root, resolved the way ``chroot`` would (safety rules 1 to 3).

The kernel is never given a path it could resolve outside the root. Each component is opened
relative to the directory before it with ``O_NOFOLLOW | O_DIRECTORY``; a symlink met on the way
is read and its target resolved by us: an absolute target restarts at the root, ``..`` at the
root stays at the root, and at most :data:`MAX_LINKS` links are followed. Every later operation
names only a final component relative to a directory descriptor obtained this way.

Resolved directories are cached by the name the layer used, because tar entries arrive grouped
by directory: most entries then cost no resolution at all. Removing a directory or a symlink can
change what a cached name resolves to, so it empties the cache; descriptors handed out stay open
until :meth:`RootFS.settle`, so a caller never holds a closed (and possibly reused) descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container
from pathlib import Path
from typing import Callable, NamedTuple, Optional

#: As Linux's own limit on symlinks followed in one resolution.
MAX_LINKS = 40
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Mode of directories created because an entry needs them (as ``docker build`` makes them).
IMPLICIT_DIR_MODE = 0o755
_CACHE_SIZE = 256
_NOT_A_DIR = (errno.ENOTDIR, errno.ELOOP)


class PathError(Exception):
    """A name cannot be resolved inside the root: a link loop, or a file used as a directory."""


class Dir(NamedTuple):
    """An open directory inside the root and its path there (no symlinks, ``""`` is the root)."""

    fd: int
    path: str


def show(name: str) -> str:
    """A name for a one-line message: quoted, escaped, and shortened when absurdly long."""
    return repr(name if len(name) <= 200 else f"{name[:120]}...{name[-60:]}")


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _ignore(_path: str) -> None:
    """Default for :meth:`RootFS.remove`'s ``removed`` callback."""


class RootFS:
    """A container root directory and the in-root resolution of names below it."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, DIR_FLAGS)
        self.root = Dir(self.fd, "")
        self._cache: dict[str, Dir] = {}
        self._stale: list[Dir] = []

    def close(self) -> None:
        self.invalidate()
        self.settle()
        os.close(self.fd)

    # --- the cache ----------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget every resolution (something on a resolved path may have gone)."""
        self._stale.extend(self._cache.values())
        self._cache.clear()

    def settle(self) -> None:
        """Close what was evicted or invalidated; call between entries, never during one."""
        for d in self._stale:
            os.close(d.fd)
        self._stale.clear()

    def remember(self, key: str, d: Dir) -> None:
        """Cache a directory the caller opened itself (a directory entry just made); the cache
        now owns its descriptor."""
        old = self._cache.pop(key, None)
        if old is not None:
            self._stale.append(old)
        if len(self._cache) >= _CACHE_SIZE:
            self._stale.append(self._cache.pop(next(iter(self._cache))))
        self._cache[key] = d

    def lookup(self, key: str, create: bool) -> Optional[Dir]:
        """The directory a layer calls ``key`` (normalised: no ``..``, no leading ``/``).

        With ``create`` missing directories are made (as ``tar`` makes an entry's parents), also
        where a symlink points at something missing; without it a missing component gives None.
        Resolution starts from the longest prefix of ``key`` already resolved.
        """
        if not key:
            return self.root
        d = self._cache.get(key)
        if d is not None:
            return d
        start, rest = key, ""
        base: Optional[Dir] = None
        while base is None:
            start, _, last = start.rpartition("/")
            rest = f"{last}/{rest}" if rest else last
            base = self._cache.get(start) if start else self.root
        d = self._resolve(base, rest, key, create)
        if d is not None:
            self.remember(key, d)
        return d

    # --- resolution ---------------------------------------------------------------------------

    def _step(self, old: int, new: int) -> int:
        if old != self.fd:
            os.close(old)
        return new

    def _resolve(self, base: Dir, rest: str, key: str, create: bool) -> Optional[Dir]:
        """Resolve ``rest`` from ``base``; ``key`` names the whole path in messages."""
        pending = rest.split("/")[::-1]
        names = base.path.split("/") if base.path else []
        cur = os.dup(base.fd)
        links = 0
        try:
            while pending:
                comp = pending.pop()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if names:  # a real directory below the root: its parent is inside too
                        cur = self._step(cur, os.open("..", DIR_FLAGS, dir_fd=cur))
                        names.pop()
                    continue
                try:
                    nxt = os.open(comp, DIR_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        self._step(cur, -1)
                        return None
                    nxt = self._mkdir(cur, comp)
                except OSError as exc:
                    if exc.errno not in _NOT_A_DIR:
                        raise
                    target = self._readlink(cur, comp, names)
                    links += 1
                    if links > MAX_LINKS:
                        raise PathError(
                            f"too many levels of symbolic links in {show(key)}"
                        ) from None
                    if target.startswith("/"):
                        cur = self._step(cur, self.fd)
                        names.clear()
                    pending.extend(reversed(target.split("/")))
                    continue
                cur = self._step(cur, nxt)
                names.append(comp)
        except BaseException:
            self._step(cur, -1)
            raise
        if cur == self.fd:  # resolved to the root: the cache needs a descriptor of its own
            cur = os.dup(self.fd)
        return Dir(cur, "/".join(names))

    @staticmethod
    def _mkdir(dir_fd: int, name: str) -> int:
        os.mkdir(name, IMPLICIT_DIR_MODE, dir_fd=dir_fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        os.fchmod(fd, IMPLICIT_DIR_MODE)  # whatever the umask
        return fd

    @staticmethod
    def _readlink(dir_fd: int, name: str, names: list[str]) -> str:
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        raise PathError(f"{show(join('/'.join(names), name))} is not a directory") from None

    # --- removal ------------------------------------------------------------------------------

    def remove(
        self,
        parent: Dir,
        name: str,
        spare: Container[str] = (),
        removed: Callable[[str], None] = _ignore,
    ) -> None:
        """Remove ``name`` in ``parent`` and everything below it, never following a symlink.

        Paths in ``spare`` stay, and so do the directories above them (a whiteout keeps what
        its own layer wrote); ``spare`` must therefore hold every ancestor of a spared path.
        ``removed`` is told each path that went. A missing ``name`` is not an error.
        """
        path = join(parent.path, name)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in _NOT_A_DIR:
                raise
            if path not in spare:
                kind = os.stat(name, dir_fd=parent.fd, follow_symlinks=False).st_mode
                os.unlink(name, dir_fd=parent.fd)
                removed(path)
                if stat.S_ISLNK(kind):
                    self.invalidate()
            return
        self._empty(fd, path, spare, removed)
        if path not in spare:
            os.rmdir(name, dir_fd=parent.fd)
            removed(path)
        self.invalidate()

    @staticmethod
    def _empty(fd: int, path: str, spare: Container[str], removed: Callable[[str], None]) -> None:
        """Remove the contents of directory ``fd`` (closing it), depth first.

        Iterative, holding one descriptor: a hostile layer can nest directories deeper than
        Python's recursion limit or the open-file limit. Going back up opens ``..``, which is
        safe here because every directory on the way was opened below the root without
        following a symlink.
        """
        stack = [(path, _children(fd))]
        try:
            while stack:
                dpath, pending = stack[-1]
                if pending:
                    child, is_dir = pending.pop()
                    cpath = join(dpath, child)
                    if is_dir:
                        fd = _swap(fd, os.open(child, DIR_FLAGS, dir_fd=fd))
                        stack.append((cpath, _children(fd)))
                    elif cpath not in spare:
                        os.unlink(child, dir_fd=fd)
                        removed(cpath)
                    continue
                stack.pop()
                if stack:
                    fd = _swap(fd, os.open("..", DIR_FLAGS, dir_fd=fd))
                    if dpath not in spare:
                        os.rmdir(dpath.rpartition("/")[2], dir_fd=fd)
                        removed(dpath)
        finally:
            os.close(fd)


def _swap(old: int, new: int) -> int:
    os.close(old)
    return new


def _children(fd: int) -> list[tuple[str, bool]]:
    with os.scandir(fd) as it:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
