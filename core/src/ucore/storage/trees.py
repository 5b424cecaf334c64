"""Removing a tree the store or a container holds, whatever an image or a program did to it.

Here, below the store and the containers, because both remove trees: the store a reference made
a directory by hand, the containers their roots.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from ucore.storage.rootfs import DIR_FLAGS
from ucore.values.errors import store_error


def remove_tree(path: Path) -> None:
    """Remove a tree, never following a symlink, giving the owner back the permissions an
    image or a program in the container took away (Go's module cache is read-only, for one).

    Not ``shutil.rmtree``: it recurses (an image can nest directories deeper than Python's
    recursion limit), and its error callback cannot retry what failed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return
        _grant_owner(None, str(path))
        _empty_tree(path)
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise store_error(exc, f"removing {path}") from exc


def _grant_owner(dir_fd: Optional[int], name: str) -> None:
    """Give the owner ``rwx`` on a directory it owns, through an ``O_PATH`` descriptor
    checked to be a directory (never a symlink a rival swapped in)."""
    pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(pfd)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o700 != 0o700:
            os.chmod(f"/proc/self/fd/{pfd}", stat.S_IMODE(st.st_mode) | 0o700)
    finally:
        os.close(pfd)


def _empty_tree(top: Path) -> None:
    """Remove everything below ``top``, depth first, holding one descriptor (a tree can nest
    deeper than the open-file limit); going up opens ``..``, safe because every directory on
    the way was opened without following a symlink."""

    def children(fd: int) -> list[tuple[str, bool]]:
        with os.scandir(fd) as it:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]

    fd = os.open(top, DIR_FLAGS)
    try:
        stack: list[tuple[str, list[tuple[str, bool]]]] = [("", children(fd))]
        while stack:
            here, pending = stack[-1]
            if pending:
                name, is_dir = pending.pop()
                if not is_dir:
                    os.unlink(name, dir_fd=fd)
                    continue
                _grant_owner(fd, name)
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                stack.append((name, children(fd)))
                continue
            stack.pop()
            if stack:
                parent = os.open("..", DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(here, dir_fd=fd)
    finally:
        os.close(fd)
