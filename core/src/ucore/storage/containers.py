"""Containers in the store: create (unpack into staging, rename into place), find by name or
id, list, name, protect, clone and remove.

A container directory is ``containers/<id>/`` holding ``ROOT/`` (the root filesystem) and
``container.json``. Names are files in ``containers/.names/`` created with ``O_EXCL``, so when many
jobs run ``create --name X`` at once exactly one wins; the name is reserved before the (long)
unpack, so the others fail at once with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ucore.storage import leases
from ucore.storage.leases import HOST, STALE_FOREIGN, pid_alive
from ucore.storage.rootfs import DIR_FLAGS
from ucore.storage.store import read_record
from ucore.storage.trees import remove_tree
from ucore.values.errors import IntegrityError, NotFoundError, StoreError, UsageError, store_error
from ucore.values.model import Container

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.storage.store import Store
    from ucore.values.oci import Image

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_ID = re.compile(r"[0-9a-f]{32}")
#: Staging (create, clone) and trash (rm) directories: ``.KIND-ID.HOST.PID``.
_LEFTOVER = re.compile(
    r"\.(?P<kind>staging|removing)-(?P<id>[0-9a-f]{32})\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)"
)
META = "container.json"
#: A copy of the image config (Entrypoint, Cmd, Env, ...), as udocker keeps one: a run reads
#: it without touching the image's blobs, and the container still runs after ``rmi``.
IMAGE_CONFIG = "image-config.json"
#: The leases a run and an rm hold in the container's directory where ``flock`` fails.
RUN_LEASE, RM_LEASE = ".run", ".rm"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or _ID.fullmatch(name):
        raise UsageError(
            f"invalid container name {name!r}: letters, digits, '_', '.' and '-', starting with a"
            " letter or digit (and not 32 hex digits, which look like an id)"
        )
    return name


def _names_dir(store: Store) -> Path:
    return store.containers / ".names"


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = read_record(path / META, f"metadata of container {path.name}")
    except FileNotFoundError:
        if path.is_dir():  # deleted by hand: damaged, and ``rm -f`` removes it
            raise StoreError(f"the metadata of container {path.name} is missing") from None
        raise NotFoundError(f"container {path.name} was removed") from None
    if not isinstance(data, dict):
        raise StoreError(f"unreadable metadata of container {path.name}: not a JSON object")
    return data


#: Latest creation time a record may hold (year 2242): any later one, like a string or NaN, is
#: damage, and would make ``ps`` fail to print a date.
_MAX_TIME = 1 << 33


def _container(store: Store, cid: str) -> Container:
    """The container's record; StoreError when a field has a type ucore never writes (edited
    by hand), rather than a failure later in whatever command uses it."""
    meta = _read_meta(store.containers / cid)
    created, engine, manifest = meta.get("created", 0.0), meta.get("engine"), meta.get("manifest")
    devices = meta.get("devices") or []
    if not (
        isinstance(created, (int, float))
        and 0 <= created < _MAX_TIME
        and isinstance(engine, (str, type(None)))
        and isinstance(manifest, (str, type(None)))
        and isinstance(devices, list)
        and all(isinstance(d, str) for d in devices)
    ):
        raise StoreError(f"unreadable metadata of container {cid}: a field has the wrong type")
    return Container(
        id=cid,
        dir=store.containers / cid,
        image=str(meta.get("image", "")),
        manifest_digest=manifest,
        names=tuple(names_of(store, cid)),
        engine=engine,
        protected=bool(meta.get("protected", False)),
        created=float(created),
        devices=tuple(devices),
    )


def damaged(store: Store, text: str) -> Container:
    """The container ``text`` names whose record cannot be read, as far as the store still
    tells (its id, directory and names), so that ``ps`` can show it and ``rm -f`` remove it."""
    cid = _resolve(store, text)
    return Container(
        id=cid, dir=store.containers / cid, image="", names=tuple(names_of(store, cid))
    )


def names_of(store: Store, cid: str) -> list[str]:
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.listdir(_names_dir(store))):
            if _name_owner(store, entry)[0] == cid:
                found.append(entry)
    return found


def _name_owner(store: Store, name: str) -> tuple[Optional[str], str]:
    """(container id or None, who reserved it) for a name file."""
    return _name_owner_at(_names_dir(store) / name)


def _name_owner_at(path: Path) -> tuple[Optional[str], str]:
    try:
        with open(path) as f:
            text = f.read(200).split()
    except (OSError, UnicodeDecodeError):  # missing, or no reservation ucore wrote
        return None, ""
    return (text[0] if text and _ID.fullmatch(text[0]) else None), " ".join(text[1:])


class NameInUseError(UsageError):
    """The name belongs to another container (``run --pull=reuse`` then runs in that one)."""


class NameBusyError(NameInUseError):
    """The name is reserved by a create or clone that has not finished (and may still
    succeed): ``run --pull=reuse`` waits for it instead of failing."""


def reserve_name(store: Store, name: str, cid: str) -> None:
    """Claim a name for a container id, atomically; a reservation whose container never
    appeared and whose process is gone is taken over.

    The name file is written in ``tmp/`` and then hard-linked into place: ``link`` fails if
    the name exists (atomic, also on NFS), and the file is never visible empty, so a rival
    cannot mistake a reservation still being written for an abandoned one and steal it.
    """
    check_name(name)
    names = _names_dir(store)
    path = names / name
    tmp = store.tmp / f"name-{name}.{HOST}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        try:
            names.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{cid} {HOST} {os.getpid()}\n")
        except OSError as exc:
            raise store_error(exc, f"reserving container name {name}") from exc
        for _ in range(2):
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                owner, reserver = _name_owner(store, name)
                if owner and (store.containers / owner).is_dir():
                    raise NameInUseError(f"container name {name!r} is already in use") from None
                host, _, pid = reserver.partition(" ")
                if host == HOST and pid.isdigit() and pid_alive(int(pid)):
                    raise NameBusyError(
                        f"container name {name!r} is being created by pid {pid}"
                    ) from None
                if host and host != HOST and not _older_than(path, STALE_FOREIGN):
                    raise NameBusyError(
                        f"container name {name!r} is reserved by a process on host {host}"
                        " that has not finished ('ucore rmname' it if that job died)"
                    ) from None
                _take_over(store, name, owner, reserver)
            except OSError as exc:
                raise store_error(exc, f"reserving container name {name}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    raise NameInUseError(f"container name {name!r} is already in use")


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except FileNotFoundError:
        return True


def _take_over(store: Store, name: str, owner: Optional[str], reserver: str) -> None:
    """Remove an abandoned reservation, but only the one judged abandoned: it is renamed
    aside and checked, and a fresh reservation grabbed by mistake (a rival took the stale one
    over first) is put back."""
    aside = store.tmp / f"name-{name}.{HOST}.{os.getpid()}.{os.urandom(4).hex()}.stale"
    try:
        os.rename(_names_dir(store) / name, aside)
    except FileNotFoundError:
        return
    try:
        if _name_owner_at(aside) != (owner, reserver):
            with contextlib.suppress(FileExistsError):
                os.link(aside, _names_dir(store) / name)
    finally:
        remove_tree(aside)  # a directory made in its place by hand goes too


def release_name(store: Store, name: str, cid: Optional[str] = None) -> bool:
    owner, _ = _name_owner(store, name)
    if owner is None or (cid is not None and owner != cid):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_names_dir(store) / name)
    return True


@contextlib.contextmanager
def _new_container(store: Store, name: Optional[str], what: str) -> Iterator[tuple[str, Path]]:
    """Reserve the name, hand out a staging directory, and publish it as ``containers/<id>``
    when the block completes; when it fails, remove the staging directory and the name."""
    remove_leftovers(store)
    cid = os.urandom(16).hex()
    if name is not None:
        reserve_name(store, name, cid)
    staging = store.containers / f".staging-{cid}.{HOST}.{os.getpid()}"
    try:
        yield cid, staging
        os.rename(staging, store.containers / cid)
    except BaseException as exc:
        remove_tree(staging)
        if name is not None:
            release_name(store, name, cid)
        if isinstance(exc, OSError):
            raise store_error(exc, what) from exc
        raise


def _write_meta(staging: Path, meta: dict[str, Any]) -> None:
    with open(staging / META, "w") as f:
        json.dump(meta, f, indent=1)


def create(session: Session, image: Image, name: Optional[str] = None) -> Container:
    """Unpack ``image`` into a new container (staging directory renamed into place)."""
    store = session.store.ensure()
    with _new_container(store, name, "creating the container") as (cid, staging):
        staging.mkdir(mode=0o700)
        (staging / "ROOT").mkdir(mode=0o755)
        # the shared gc lock keeps a concurrent rmi from deleting the layers mid-unpack
        with store.shared_lock("gc"), session.stage("create", image.ref.familiar):
            root = session.hook.ucore_unpack(image=image, dest=staging / "ROOT", session=session)
        if root is None:
            raise IntegrityError("no plugin could unpack the image (is 'unpack' blocked?)")
        from ucore.storage.manifest import MAX_CONFIG

        (staging / IMAGE_CONFIG).write_bytes(store.read_blob(image.config_digest, MAX_CONFIG))
        _write_meta(
            staging,
            {
                "image": str(image.ref),
                "manifest": str(image.manifest_digest),
                "platform": str(image.platform) if image.platform else None,
                "created": time.time(),
                "engine": None,
                "protected": False,
            },
        )
    return _container(store, cid)


def image_config(container: Container) -> dict[str, Any]:
    """The config of the image the container was made from; empty for a bare root
    (``run --location``) or a container whose copy is missing or damaged."""
    try:
        with open(Path(container.dir) / IMAGE_CONFIG, "rb") as f:
            doc = json.loads(f.read())  # written by create, from a blob within MAX_CONFIG
    except (OSError, ValueError, RecursionError):  # RecursionError: nested past json's limit
        return {}
    return doc if isinstance(doc, dict) else {}


def lookup(store: Store, text: str) -> Container:
    """By name, by full id, or by an unambiguous id prefix (at least 4 characters)."""
    return _container(store, _resolve(store, text))


def _resolve(store: Store, text: str) -> str:
    """The id of the container ``text`` names (see :func:`lookup`)."""
    owner, _ = _name_owner(store, text) if _NAME.fullmatch(text) else (None, "")
    if owner and (store.containers / owner).is_dir():
        return owner
    if re.fullmatch(r"[0-9a-f]{4,32}", text):
        matches = [c for c in all_ids(store) if c.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"container id prefix {text!r} is ambiguous")
    raise NotFoundError(f"no container named {text!r} (see 'ucore ps')")


def find(store: Store, text: str) -> Optional[Container]:
    """:func:`lookup`, or None when no container has that name or id (callers that accept a
    container or an image then try the image)."""
    try:
        return lookup(store, text)
    except NotFoundError:
        return None


def all_ids(store: Store) -> list[str]:
    try:
        return sorted(e for e in os.listdir(store.containers) if _ID.fullmatch(e))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise store_error(exc, f"listing {store.containers}") from exc


def all_containers(store: Store) -> list[tuple[Container, Optional[str]]]:
    """Every complete container, each with None or, when its record is damaged, why: one
    damaged container must neither hide the others nor itself."""
    out: list[tuple[Container, Optional[str]]] = []
    for cid in all_ids(store):
        try:
            out.append((_container(store, cid), None))
        except NotFoundError:
            continue  # removed meanwhile
        except StoreError as exc:
            out.append((damaged(store, cid), str(exc)))
    return out


def update(store: Store, container: Container, **changes: Any) -> Container:
    """Change metadata fields (engine, protected) atomically."""
    meta = _read_meta(container.dir)
    meta.update(changes)
    store.write_json_atomic(container.dir / META, meta)
    return container._replace(**changes)


def remove(store: Store, container: Container, force: bool = False) -> None:
    label = container.names[0] if container.names else container.id
    if container.protected and not force:
        raise UsageError(f"container {label} is protected: 'ucore unprotect' it first")
    mounted = mounts_under(container.dir)
    if mounted:
        raise UsageError(
            f"container {label} has a filesystem mounted at {mounted[0]}: unmount it first"
        )
    trash = store.containers / f".removing-{container.id}.{HOST}.{os.getpid()}"
    with _locked(store, container, exclusive=True) as held:
        if not held:
            raise UsageError(f"container {label} is in use by a running 'ucore run'")
        try:
            os.rename(container.dir, trash)
        except OSError as exc:
            raise store_error(exc, f"removing container {container.id}") from exc
    for name in container.names:
        release_name(store, name, container.id)
    remove_tree(trash)


@contextlib.contextmanager
def running(store: Store, container: Container) -> Iterator[None]:
    """Held while ``ucore run`` uses the container, so that ``rm`` refuses to delete files
    from under the command, as Docker refuses to remove a running container."""
    with _locked(store, container, exclusive=False) as held:
        if not held:
            raise NotFoundError(f"container {container.id} is being removed")
        yield


@contextlib.contextmanager
def _locked(store: Store, container: Container, exclusive: bool) -> Iterator[bool]:
    """A lock on the container's directory (runs share it, rm takes it alone), never waited
    for; yields whether it was had. The directory must still be the container's once locked
    (not renamed away by an rm that held the lock meanwhile).

    Where the filesystem cannot lock (some NFS), runs and rm each hold a lease
    (:mod:`ucore.storage.leases`) in the directory instead and then look for the other side's: of a
    run and an rm starting at once, at least one sees the other and backs off."""
    import fcntl

    try:
        fd = os.open(container.dir, DIR_FLAGS)
    except FileNotFoundError:
        raise NotFoundError(f"container {container.id} was removed") from None
    except OSError as exc:
        raise store_error(exc, f"opening container {container.id}") from exc
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError as exc:
            store.locks_fail(exc)
            mine, theirs = (RM_LEASE, RUN_LEASE) if exclusive else (RUN_LEASE, RM_LEASE)
            with contextlib.ExitStack() as stack:
                try:
                    name = stack.enter_context(leases.held(container.dir, mine, dir_fd=fd))
                except StoreError:  # a store this user cannot write, nor so rm anything of
                    name = ""
                _check_in_place(container, fd)
                yield not leases.others(container.dir, theirs, name)
            return
        _check_in_place(container, fd)
        yield True
    finally:
        os.close(fd)


def _check_in_place(container: Container, fd: int) -> None:
    """NotFoundError unless the directory open on ``fd`` is still the container's."""
    try:
        moved = not os.path.samestat(os.fstat(fd), os.stat(container.dir))
    except FileNotFoundError:
        moved = True
    if moved:
        raise NotFoundError(f"container {container.id} was removed")


def remove_leftovers(store: Store) -> set[str]:
    """Finish what a ``create``, ``clone`` or ``rm`` killed outright left: its staging or
    trash directory (named with host and pid), once that process is gone (on another host:
    a day after it last changed). Each is first renamed to a trash name of this process, so
    that of many jobs doing this at once only one removes it. Returns the ids whose removal
    was finished."""
    finished = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(store.containers):
            m = _LEFTOVER.fullmatch(entry)
            if not m or m["pid"] == str(os.getpid()):
                continue
            if m["host"] == HOST:
                if pid_alive(int(m["pid"])):
                    continue
            elif not _older_than(store.containers / entry, STALE_FOREIGN):
                continue
            if mounts_under(store.containers / entry):
                continue
            trash = store.containers / f".removing-{m['id']}.{HOST}.{os.getpid()}"
            try:
                os.rename(store.containers / entry, trash)
            except OSError:
                continue  # another job took it first
            with contextlib.suppress(StoreError):
                remove_tree(trash)
            if m["kind"] == "removing":
                finished.add(m["id"])
    return finished


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, which removing the tree would empty: a bind mount
    left behind, a data set mounted with FUSE. Whether something is mounted on a directory
    cannot be told from the directory (a bind mount of the same filesystem looks like any
    other), so the mount table says; without one, nothing is known to be mounted."""
    top = os.path.realpath(path)
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 4:
                point = re.sub(rb"\\([0-3][0-7]{2})", lambda m: bytes([int(m[1], 8)]), fields[4])
                where = os.fsdecode(point)
                if where == top or where.startswith(top + "/"):
                    found.append(where)
    return found


def size_of(container: Container) -> int:
    """Bytes allocated under the root, as ``du`` counts them (an inode with several links
    once); iterative (see :func:`~ucore.storage.trees.remove_tree`), and what cannot be read is
    not counted."""
    total = 0
    seen: set[tuple[int, int]] = set()
    pending = [str(container.root)]
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def clone(session: Session, source: Container, name: Optional[str] = None) -> Container:
    """Copy a container into a new one, as it is (see :func:`ucore.storage.treewalk.copy_tree`)."""
    from ucore.storage.treewalk import copy_tree

    store = session.store
    with _new_container(store, name, f"cloning container {source.id}") as (cid, staging):
        copy_tree(source.dir, staging)
        for lease in os.listdir(staging):  # the source's runs', which are not the clone's
            if lease.startswith((RUN_LEASE + ".", RM_LEASE + ".")):
                os.unlink(staging / lease)
        meta = _read_meta(staging)
        meta.update({"created": time.time(), "protected": False, "cloned_from": source.id})
        _write_meta(staging, meta)
    return _container(store, cid)
