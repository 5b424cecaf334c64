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
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import attrs

from ucore.errors import IntegrityError, NotFoundError, StoreError, UsageError
from ucore.model import Container, Image
from ucore.store import _HOST, _pid_alive, store_error

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.store import Store

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_ID = re.compile(r"[0-9a-f]{32}")
META = "container.json"


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
        with open(path / META) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NotFoundError(f"container {path.name} is incomplete or was removed") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"unreadable metadata of container {path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise StoreError(f"unreadable metadata of container {path.name}")
    return data


def _container(store: Store, cid: str) -> Container:
    meta = _read_meta(store.containers / cid)
    return Container(
        id=cid,
        dir=store.containers / cid,
        image=str(meta.get("image", "")),
        manifest_digest=meta.get("manifest"),
        names=tuple(names_of(store, cid)),
        engine=meta.get("engine"),
        protected=bool(meta.get("protected", False)),
        created=float(meta.get("created", 0.0)),
    )


def names_of(store: Store, cid: str) -> list[str]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(_names_dir(store))):
            if _name_owner(store, entry)[0] == cid:
                found.append(entry)
    return found


def _name_owner(store: Store, name: str) -> tuple[Optional[str], str]:
    """(container id or None, who reserved it) for a name file."""
    try:
        with open(_names_dir(store) / name) as f:
            text = f.read(200).split()
    except (FileNotFoundError, NotADirectoryError):
        return None, ""
    return (text[0] if text and _ID.fullmatch(text[0]) else None), " ".join(text[1:])


def reserve_name(store: Store, name: str, cid: str) -> None:
    """Claim a name for a container id, atomically; a reservation whose container never
    appeared and whose process is gone is taken over."""
    check_name(name)
    names = _names_dir(store)
    names.mkdir(mode=0o700, exist_ok=True)
    path = names / name
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            owner, reserver = _name_owner(store, name)
            if owner and (store.containers / owner).is_dir():
                raise UsageError(f"container name {name!r} is already in use") from None
            host, _, pid = reserver.partition(" ")
            if host == _HOST and pid.isdigit() and _pid_alive(int(pid)):
                raise UsageError(f"container name {name!r} is being created by pid {pid}") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        except OSError as exc:
            raise store_error(exc, f"reserving container name {name}") from exc
        with os.fdopen(fd, "w") as f:
            f.write(f"{cid} {_HOST} {os.getpid()}\n")
        return
    raise UsageError(f"container name {name!r} is already in use")


def release_name(store: Store, name: str, cid: Optional[str] = None) -> bool:
    owner, _ = _name_owner(store, name)
    if owner is None or (cid is not None and owner != cid):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_names_dir(store) / name)
    return True


def create(session: Session, image: Image, name: Optional[str] = None) -> Container:
    """Unpack ``image`` into a new container (staging directory renamed into place)."""
    store = session.store.ensure()
    cid = uuid.uuid4().hex
    if name is not None:
        reserve_name(store, name, cid)
    staging = store.containers / f".staging-{cid}.{_HOST}.{os.getpid()}"
    try:
        staging.mkdir(mode=0o700)
        (staging / "ROOT").mkdir(mode=0o755)
        with session.stage("create", image.ref.familiar):
            root = session.hook.ucore_unpack(image=image, dest=staging / "ROOT", session=session)
        if root is None:
            raise IntegrityError("no plugin could unpack the image (is 'unpack' blocked?)")
        meta = {
            "image": str(image.ref),
            "manifest": str(image.manifest_digest),
            "platform": str(image.platform) if image.platform else None,
            "created": time.time(),
            "engine": None,
            "protected": False,
        }
        with open(staging / META, "w") as f:
            json.dump(meta, f, indent=1)
        os.rename(staging, store.containers / cid)
    except BaseException as exc:
        remove_tree(staging)
        if name is not None:
            release_name(store, name, cid)
        if isinstance(exc, OSError):
            raise store_error(exc, "creating the container") from exc
        raise
    return _container(store, cid)


def lookup(store: Store, text: str) -> Container:
    """By name, by full id, or by an unambiguous id prefix (at least 4 characters)."""
    owner, _ = _name_owner(store, text) if _NAME.fullmatch(text) else (None, "")
    if owner and (store.containers / owner).is_dir():
        return _container(store, owner)
    if re.fullmatch(r"[0-9a-f]{4,32}", text):
        matches = [c for c in all_ids(store) if c.startswith(text)]
        if len(matches) == 1:
            return _container(store, matches[0])
        if len(matches) > 1:
            raise UsageError(f"container id prefix {text!r} is ambiguous")
    raise NotFoundError(f"no container named {text!r} (see 'ucore ps')")


def all_ids(store: Store) -> list[str]:
    try:
        return sorted(e for e in os.listdir(store.containers) if _ID.fullmatch(e))
    except FileNotFoundError:
        return []


def all_containers(store: Store) -> list[Container]:
    out = []
    for cid in all_ids(store):
        with contextlib.suppress(NotFoundError, StoreError):
            out.append(_container(store, cid))
    return out


def update(store: Store, container: Container, **changes: Any) -> Container:
    """Change metadata fields (engine, protected) atomically."""
    meta = _read_meta(container.dir)
    meta.update(changes)
    store.write_json_atomic(container.dir / META, meta)
    return attrs.evolve(container, **changes)


def remove(store: Store, container: Container, force: bool = False) -> None:
    if container.protected and not force:
        raise UsageError(f"container {container.names[0] if container.names else container.id}"
                         " is protected: 'ucore unprotect' it first")
    trash = store.containers / f".removing-{container.id}.{_HOST}.{os.getpid()}"
    try:
        os.rename(container.dir, trash)
    except FileNotFoundError:
        raise NotFoundError(f"container {container.id} was already removed") from None
    except OSError as exc:
        raise store_error(exc, f"removing container {container.id}") from exc
    for name in container.names:
        release_name(store, name, container.id)
    remove_tree(trash)


def remove_tree(path: Path) -> None:
    """rmtree that first gives the owner write and search permission where an image (or a
    program in the container) took it away; never follows symlinks."""

    def fix(func: Any, target: str, _exc: Any) -> None:
        parent = os.path.dirname(target)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
            if not os.path.islink(target) and os.path.isdir(target):
                os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) | stat.S_IRWXU)
        func(target)

    if not os.path.lexists(path):
        return
    try:
        shutil.rmtree(path, onerror=fix)
    except OSError as exc:
        raise store_error(exc, f"removing {path}") from exc


def size_of(container: Container) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(container.root):
        for fname in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, fname)).st_blocks * 512
    return total


def clone(session: Session, source: Container, name: Optional[str] = None) -> Container:
    """Copy a container (links kept as links, modes kept) into a new one."""
    store = session.store
    cid = uuid.uuid4().hex
    if name is not None:
        reserve_name(store, name, cid)
    staging = store.containers / f".staging-{cid}.{_HOST}.{os.getpid()}"
    try:
        shutil.copytree(source.dir, staging, symlinks=True)
        meta = _read_meta(staging)
        meta.update({"created": time.time(), "protected": False, "cloned_from": source.id})
        with open(staging / META, "w") as f:
            json.dump(meta, f, indent=1)
        os.rename(staging, store.containers / cid)
    except BaseException as exc:
        remove_tree(staging)
        if name is not None:
            release_name(store, name, cid)
        if isinstance(exc, (OSError, shutil.Error)):
            raise StoreError(f"cloning container {source.id}: {exc}".splitlines()[0]) from None
        raise
    return _container(store, cid)
