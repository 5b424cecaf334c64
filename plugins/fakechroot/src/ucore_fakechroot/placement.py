"""Showing a host path at another path in the container, for a libfakechroot without a map.

Fakechroot has two ways to show host paths: ``FAKECHROOT_EXCLUDE_PATH`` (the host path
itself, at the same path: ``/dev``, ``/proc``, a volume ``-v /scratch:/scratch``) and, in
udocker's own build only, ``FAKECHROOT_DIR_MAP``. Debian's build has no map, so a volume at
another path, and ucore's private copies of ``/etc/resolv.conf``, ``/etc/host.conf`` and the
``--hostauth`` account files, are *placed*: for the run, the container path becomes a symbolic
link to the host path (which is excluded, so the program reaches it by either name), and what
the image had there is moved aside, into the container directory (outside the root).

When the last run of the container ends, every link is removed and every moved entry comes
back, so the root is as it was. Runs of one container share the placements: each holds a
shared ``flock`` on ``run.lock`` while it runs; a run that ends and gets it exclusively
(without waiting) is alone and restores. ``place.lock``, taken first by every run, orders a
starting run against one restoring. A run killed outright leaves its record, which the next
run that starts alone restores first.

Names a run places are checked against the links already there: two runs of one container at
once that want different host paths at one container path cannot both have it, and the second
is refused, rather than one of them writing into the other's volume.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Optional

from ucore.log import get_logger
from ucore.storage import inroot
from ucore.values.errors import UsageError

log = get_logger(__name__)

_RECORD = "placed.json"


class Placed(NamedTuple):
    #: Host paths the program must reach untranslated (``FAKECHROOT_EXCLUDE_PATH``).
    exclude: tuple[str, ...]
    #: Container path -> host path of each mapped mount, for translating library paths.
    mapped: tuple[tuple[str, str], ...]


class Want(NamedTuple):
    target: str  # canonical in the root
    source: str  # host path
    #: ucore's own copy (name files, accounts): without a writable root it is left out and
    #: the image's own file is used, as a read-only shared store has to.
    optional: bool


@contextlib.contextmanager
def placed(state: Path, root: Path, wants: Sequence[Want], same: Sequence[str]) -> Iterator[Placed]:
    """Place ``wants`` in ``root`` for the duration of the block; ``same`` are host paths
    shown at the same path (only excluded)."""
    exclude = list(same)
    mapped: list[tuple[str, str]] = []
    if not wants:
        yield Placed(tuple(exclude), ())
        return
    locks = _locks(state)
    if locks is None:  # a store this user cannot write: only what needs no placing
        for want in wants:
            if not want.optional:
                raise UsageError(
                    f"volume {want.source}:{want.target}: Fakechroot shows a host path at another"
                    " path through a link in the container, which this store does not let"
                    " this user write; bind it at the same path (-v PATH:PATH)"
                )
        yield Placed(tuple(exclude), ())
        return
    place_fd, run_fd = locks
    try:
        fcntl.flock(place_fd, fcntl.LOCK_EX)
        try:
            try:
                fcntl.flock(run_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _restore(state, root)  # alone: a killed run's placements go first
                fcntl.flock(run_fd, fcntl.LOCK_SH)
            except BlockingIOError:
                fcntl.flock(run_fd, fcntl.LOCK_SH)
            for want in wants:
                _place(state, root, want)
                exclude.append(want.source)
                mapped.append((want.target, want.source))
        finally:
            fcntl.flock(place_fd, fcntl.LOCK_UN)
        yield Placed(tuple(exclude), tuple(mapped))
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(place_fd, fcntl.LOCK_EX)
            try:
                fcntl.flock(run_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # others still run: the last one out restores
            else:
                _restore(state, root)
        os.close(run_fd)
        os.close(place_fd)


def _locks(state: Path) -> Optional[tuple[int, int]]:
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        place = os.open(state / "place.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None
        raise
    try:
        run = os.open(state / "run.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        os.close(place)
        raise
    return place, run


def _record(state: Path) -> dict[str, list[list[str]]]:
    try:
        data = json.loads((state / _RECORD).read_text())
    except (OSError, ValueError):
        return {"links": [], "aside": [], "dirs": []}
    return {k: [list(map(str, e)) for e in data.get(k, [])] for k in ("links", "aside", "dirs")}


def _save(state: Path, record: dict[str, list[list[str]]]) -> None:
    tmp = state / f".{_RECORD}.{os.getpid()}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, state / _RECORD)


def _place(state: Path, root: Path, want: Want) -> None:
    record = _record(state)
    for target, source in record["links"]:
        if target == want.target:
            if source == want.source:
                return  # a run of this container that is still going placed it
            raise UsageError(
                f"{want.target}: another run of this container shows {source} there; with"
                " Fakechroot, runs at once must agree on what each container path shows"
            )
        if inroot.under(want.target, target):
            raise UsageError(
                f"{want.target}: inside {target}, which shows the host's {source}; with"
                " Fakechroot a volume cannot be placed inside another"
            )
    host = str(root) + want.target
    for made in _make_parents(root, want.target):
        record["dirs"].append([made])
        _save(state, record)
    try:
        st: Optional[os.stat_result] = os.lstat(host)
    except FileNotFoundError:
        st = None
    if st is not None:
        aside = state / "aside"
        aside.mkdir(mode=0o700, exist_ok=True)
        name = str(aside / f"{len(record['aside'])}-{os.urandom(4).hex()}")
        try:
            os.rename(host, name)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # a root outside the store (run --location) on another filesystem: aside in
            # its own directory, under a name the record keeps
            name = f"{host}.ucore-aside-{os.urandom(4).hex()}"
            os.rename(host, name)
        record["aside"].append([want.target, name])
        _save(state, record)
    record["links"].append([want.target, want.source])
    _save(state, record)
    os.symlink(want.source, host)


def _make_parents(root: Path, target: str) -> list[str]:
    made = []
    parts = [p for p in target.split("/") if p][:-1]
    path = ""
    for part in parts:
        path += "/" + part
        try:
            os.mkdir(str(root) + path, 0o755)
        except FileExistsError:
            continue
        made.append(path)
    return made


def _restore(state: Path, root: Path) -> None:
    record = _record(state)
    if not any(record.values()):
        return
    for target, source in reversed(record["links"]):
        host = str(root) + target
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(host).st_mode) and os.readlink(host) == source:
                os.unlink(host)
    for target, name in reversed(record["aside"]):
        host = str(root) + target
        try:
            os.lstat(host)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.rename(name, host)
        else:  # the container made something new there since: the image's entry is lost
            log.warning(f"{target}: the container replaced it while placed; kept its own")
    for (made,) in reversed(record["dirs"]):
        with contextlib.suppress(OSError):
            os.rmdir(str(root) + made)
    with contextlib.suppress(OSError):
        os.unlink(state / _RECORD)
