"""Removing the mount points an engine's runtime makes in the root for a run's transient mounts.

For every engine whose runtime bind-mounts into the container's own root (runc, crun,
bubblewrap): :func:`removed_after` around the runtime keeps the promise of
:attr:`ucore.values.model.Mount.transient`.

A bind mount needs its target to exist, and where the image lacks it the runtime creates it in
the root filesystem (directories, and an empty file for a file), where it stays. For the mounts
made for one run only (GPU driver libraries, device files: ``Mount.transient`` and every
``DeviceNode``) that would leave ``/usr/local/nvidia/lib64/libcuda.so.1`` and its directories
behind in the container, empty, after a run on a GPU node. So before its runtime starts, a run
appends to a record in the container directory (outside the root) the components of those
targets that the root lacks, and makes them itself, as the user (made by an unprivileged runc
for a ``-u`` run, they would belong to an ``/etc/subuid`` id the user cannot remove); a run
killed outright leaves the record for a later run to use.

Many runs of one container may be active at once (the jobs of an array), sharing those mount
points. Each run holds a shared ``flock`` on a lock file beside the record from before it looks
at the root until its runtime has exited, then asks for it exclusively without waiting: only a
run that ends alone gets it, and removes what the record names, then the record. A run that
starts meanwhile waits for the shared lock, which takes milliseconds.

The root is the image's and the container's processes write to it: a recorded path may have
become a symbolic link to a host file since. Each path is opened component by component from
the root without following links, and only an empty directory or an empty regular file is
removed.

None of this can fail a run. Where the container directory cannot be written (a store shared
read-only) or locked (some cluster filesystems), mount points stay, as volumes' always do: a
store shared read-only relies on those.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ucore.log import get_logger
from ucore.storage import inroot
from ucore.storage.rootfs import DIR_FLAGS

if TYPE_CHECKING:
    from ucore.values.model import Container, Mount, RunSpec

#: In the container directory: paths (NUL-terminated) a run found missing, and their lock.
RECORD = "mountpoints"
LOCK = "mountpoints.lock"
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC

log = get_logger(__name__)


@contextlib.contextmanager
def removed_after(container: Container, spec: RunSpec) -> Iterator[None]:
    """Around a run's runtime: record the mount points it will make for the transient mounts
    and devices of ``spec``, and remove every recorded one afterwards if no other run is
    active."""
    lock = _shared_lock(container.dir)
    if lock is None:
        yield
        return
    try:
        transient = [m.target for m in spec.mounts if m.transient]
        transient += [d.target or d.path for d in spec.devices]
        if transient:
            kept = [m.target for m in spec.mounts if not m.transient]
            paths = missing(container.root, transient, kept)
            _record(container.dir, paths)
            files = [d.target or d.path for d in spec.devices]
            files += [m.target for m in spec.mounts if m.transient and not _is_dir(m.source)]
            walks = (_resolve(container.root, target) for target in files)
            _make(container.root, paths, {walk.path for walk in walks if walk is not None})
        yield
    finally:
        try:
            _remove_if_alone(lock, container.dir, container.root)
        finally:
            os.close(lock)


def missing(root: Path, transient: Iterable[str], kept: Iterable[str]) -> list[str]:
    """The canonical paths in ``root`` that the runtime will create as mount points for the
    ``transient`` targets: every missing component, less those the mount point of a ``kept``
    target needs too, and less what lies under :data:`ucore.storage.inroot.PSEUDO` (the runtime
    mounts its own ``/dev`` there, not the image's)."""
    found: dict[str, None] = {}
    for target in transient:
        for path in _absent(root, target):
            if not any(inroot.under(path, top) for top in inroot.PSEUDO):
                found[path] = None
    if not found:
        return []
    needed: set[str] = set()
    for target in kept:
        walk = _resolve(root, target)
        if walk is not None:
            parts = walk.path.split("/")
            needed.update("/".join(parts[:end]) for end in range(2, len(parts) + 1))
    return [path for path in found if path not in needed]


def make_lasting(root: Path, mounts: Iterable[Mount]) -> None:
    """Create the mount points of the lasting (not transient) ``mounts`` that ``root`` lacks,
    for a runtime that makes none itself (Apptainer on a ``--writable`` sandbox); they stay, as
    those a runtime makes would. A file's bind gets an empty file, the rest directories, made
    as :func:`removed_after` makes the transient ones: never through a link."""
    paths: dict[str, None] = {}
    files: set[str] = set()
    for mount in mounts:
        if mount.transient:
            continue
        absent = _absent(root, mount.target)
        paths.update(dict.fromkeys(absent))
        if absent and not _is_dir(mount.source):
            files.add(absent[-1])
    _make(root, list(paths), files)


def _absent(root: Path, target: str) -> list[str]:
    """The canonical paths, parents first, that ``target`` needs made inside ``root``."""
    walk = _resolve(root, target)
    if walk is None:
        return []
    parts = walk.path.split("/")
    return ["/".join(parts[:end]) for end in range(len(parts) - walk.missing + 1, len(parts) + 1)]


def _resolve(root: Path, target: str) -> Optional[inroot.Walk]:
    try:
        return inroot.resolve(root, target)
    except OSError as exc:  # a loop of links: the runtime refuses the mount itself
        log.debug("mount target not resolved", target=target, error=str(exc))
        return None


def _is_dir(source: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(source).st_mode)
    except OSError:
        return False


def _make(root: Path, paths: list[str], files: set[str]) -> None:
    """Create the mount points as the user, parents first, before the runtime would: one the
    runtime made for a ``-u`` run under runc belongs to the id its user namespace maps the
    container's root to (an ``/etc/subuid`` id), and the user could not remove it after
    (an empty ``/tmp/ompi.HOST.UID/pid.N`` left in the container by every MPI job). Paths
    in ``files`` become empty files, the rest directories; what cannot be made is left to
    the runtime, as before."""
    top = os.open(root, DIR_FLAGS)
    try:
        for path in sorted(paths, key=lambda p: p.count("/")):
            *parents, name = path.strip("/").split("/")
            try:
                fd = _make_dirs(top, parents)
            except OSError:
                continue
            try:
                if path in files:
                    os.close(os.open(name, os.O_CREAT | os.O_EXCL | _FILE_FLAGS, 0o644, dir_fd=fd))
                else:
                    os.mkdir(name, 0o755, dir_fd=fd)
            except OSError as exc:  # made meanwhile by another run, or not ours to make
                log.debug("mount point left to the runtime", path=path, error=str(exc))
            finally:
                os.close(fd)
    finally:
        os.close(top)


def _make_dirs(top: int, names: list[str]) -> int:
    """The directory ``names`` lead to from ``top``, made where missing (a parent a volume
    needs too: not recorded, it stays, as the runtime's would), never following a link."""
    fd = os.dup(top)
    try:
        for name in names:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=fd)
            inner = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _shared_lock(container_dir: Path) -> Optional[int]:
    """The lock file, held shared (waiting while a run removes mount points); None where it
    cannot be opened or locked."""
    try:
        fd = os.open(container_dir / LOCK, os.O_RDWR | os.O_CREAT | _FILE_FLAGS, 0o600)
    except OSError as exc:
        log.debug("mount points not tracked", error=str(exc))
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as exc:
        log.debug("mount points not tracked", error=str(exc))
        os.close(fd)
        return None
    return fd


def _record(container_dir: Path, paths: list[str]) -> None:
    """Append ``paths`` in one write, so that runs appending at once do not interleave."""
    if not paths:
        return
    data = b"".join(os.fsencode(path) + b"\0" for path in paths)
    try:
        fd = os.open(
            container_dir / RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _FILE_FLAGS, 0o600
        )
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        log.debug("mount points not recorded", paths=paths, error=str(exc))


def _remove_if_alone(lock: int, container_dir: Path, root: Path) -> None:
    """Remove the recorded mount points, deepest first, then the record, if this run can have
    the lock alone (no other run is active)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another run is active: the last to end removes them
        return
    record = container_dir / RECORD
    try:
        with open(os.open(record, os.O_RDONLY | _FILE_FLAGS), "rb") as f:
            recorded = {os.fsdecode(p) for p in f.read().split(b"\0") if p.startswith(b"/")}
        _remove(root, sorted(recorded, key=lambda p: p.count("/"), reverse=True))
        os.unlink(record)
    except FileNotFoundError:  # nothing recorded
        pass
    except OSError as exc:
        log.debug("mount points not removed", error=str(exc))


def _remove(root: Path, paths: Iterable[str]) -> None:
    top = os.open(root, DIR_FLAGS)
    try:
        for path in paths:
            try:
                _remove_one(top, path)
            except OSError as exc:  # gone, not empty, a link on the way: left as it is
                log.debug("mount point kept", path=path, error=str(exc))
    finally:
        os.close(top)


def _remove_one(top: int, path: str) -> None:
    """Remove ``path`` (canonical, in the root open as ``top``) if it is an empty directory or
    an empty regular file, opening every directory on the way without following links."""
    *parents, name = path.strip("/").split("/")
    fd = inroot.open_dir(top, parents)
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=fd)
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
