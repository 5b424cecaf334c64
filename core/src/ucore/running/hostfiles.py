"""Private copies of host files a container sees: ``/etc/resolv.conf`` and ``/etc/host.conf``
(name resolution, as udocker binds them), and the account files of :mod:`ucore.running.hostauth`.

Docker gives each container a copy of the host's ``resolv.conf`` rather than the file itself,
and so does ucore: bound read-write, the host's own file would be rewritten or removed by any
container process that writes its ``/etc/resolv.conf`` (an entrypoint setting a DNS server,
``rm -f`` in a build script), and for a root user that is the host's file. A copy lives in the
container directory, outside the root filesystem, is rewritten only when the host's changes,
and is what the container's writes reach.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Optional

from ucore.storage import inroot
from ucore.values.model import Mount

#: The host files a run shows in the container (when the host has them), by their path.
NAME_FILES = ("/etc/resolv.conf", "/etc/host.conf")
#: A host file larger than this is not one to copy into every container.
MAX_SIZE = 1 << 20


def name_files(root: Path, state_dir: Path) -> list[Mount]:
    """Mounts of private copies of the host's :data:`NAME_FILES` over the image's, where a
    file can be bound (:func:`bindable`). The host file itself is bound when no copy can be
    written (another user's store, shared read-only): its writes then fail, as before."""
    mounts = []
    for path in NAME_FILES:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SIZE + 1)
        except OSError:  # the host has none (or it is a directory): nothing to show
            continue
        if len(data) > MAX_SIZE or not bindable(root, path):
            continue
        copy = write_copy(state_dir, os.path.basename(path), data)
        mounts.append(Mount(str(copy) if copy else os.path.realpath(path), path))
    return mounts


def bindable(root: Path, path: str) -> bool:
    """Whether a file can be bound over the image's ``path``: it is a regular file, or
    nothing (the engine makes the mount point), and no image link aims it under ``/proc``,
    ``/sys`` or ``/dev``. A directory there, or a loop of links, is the image's own affair."""
    try:
        walk = inroot.resolve(root, path)
    except OSError:
        return False
    if any(inroot.under(walk.path, p) for p in inroot.PSEUDO):
        return False
    return walk.missing > 0 or (walk.mode is not None and stat.S_ISREG(walk.mode))


def write_copy(state_dir: Path, name: str, data: bytes) -> Optional[Path]:
    """``state_dir/name`` holding ``data``: written atomically, and not at all when unchanged,
    since concurrent runs of one container share these files and a cluster filesystem is
    better off without needless writes.

    None when the container directory cannot be written (another user's store shared
    read-only). A full disk is a StoreError, as everywhere in the store.
    """
    path = state_dir / name
    with contextlib.suppress(OSError), open(path, "rb") as f:
        if f.read(len(data) + 1) == data:
            return path
    tmp = state_dir / f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None
        from ucore.values.errors import store_error

        raise store_error(exc, f"writing the container's copy of {name}") from exc
    return path
