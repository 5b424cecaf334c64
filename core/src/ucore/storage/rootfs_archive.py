"""``export`` and ``import``: a container's root filesystem to a tarball, a tarball to an image.

Export walks the root as :mod:`ucore.storage.treewalk` does, never following a symlink: symlinks are
stored as links, hardlinks as hardlinks, and a program in the container that planted a link to
``/etc/shadow`` gets a link in the tarball, never the host file. The tarball says what the
image said, not what an unprivileged unpack had to do: directories the unpacker opened up get
back their recorded modes (a ``0000`` directory is ``0000`` in the tarball), and, when the
exporter is not root, files it owns are written as owned by root (uid/gid 0), as they appear
inside the container under root emulation. As root the owners on disk are kept: a privileged
unpack kept the image's owners.

Import streams the tarball once (a file or stdin): its bytes go into a blob as they arrive
(gzip and zstd kept as they are, so nothing is compressed twice), the tar is parsed as it
passes to prove it is one, and the uncompressed bytes are hashed for the ``diff_id``. A small
config and manifest make it a one-layer image; ``--tocontainer`` hands that image to the same
unpacker ``create`` uses, so an imported tarball gets every safety rule a pulled layer gets.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import gzip
import hashlib
import json
import os
import stat
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional, cast

from ucore.storage import images, inroot
from ucore.storage import manifest as mf
from ucore.storage.archive import LAYER_TYPES
from ucore.storage.extract import open_stream
from ucore.storage.layers import compression
from ucore.storage.store import Store
from ucore.storage.stream import BadLayer
from ucore.storage.treewalk import Walker
from ucore.values.errors import IntegrityError, StoreError, UcoreError, UsageError, store_error
from ucore.values.model import Container
from ucore.values.oci import Descriptor, Digest, Image, ImageRef, Platform

if TYPE_CHECKING:
    from ucore.session import Session

_CHUNK = 1 << 20
#: The environment an imported image gets; a rootfs tarball carries no config of its own.
IMPORT_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMPORT_CMD = ("/bin/sh",)


# --- export ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What an unprivileged unpack could not reproduce, as the unpacker recorded it beside
    ``ROOT``: the image's modes (relative path -> mode) and its device nodes (path ->
    ``{"type": "char"|"block", "major", "minor", "mode"}``), now empty placeholder files."""

    modes: dict[str, int] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)


def recorded(container: Container) -> Recorded:
    from ucore.storage.extract import modes_path

    path = modes_path(Path(container.root))
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return Recorded()  # unpacked by another plugin, or as root: the disk says it all
    except RecursionError:  # arrays nested past json's limit: damaged like any other
        raise StoreError(f"unreadable {path.name} of container {container.id}") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"unreadable {path.name} of container {container.id}: {exc}") from None
    if not isinstance(data, dict):
        raise StoreError(f"unreadable {path.name} of container {container.id}")
    modes: dict[str, int] = {}
    for key, value in (data.get("modes") or {}).items():
        with contextlib.suppress(TypeError, ValueError):
            modes[str(key)] = int(value, 8) & 0o7777
    devices = {
        str(k): v
        for k, v in (data.get("devices") or {}).items()
        if isinstance(v, dict) and v.get("type") in ("char", "block")
    }
    return Recorded(modes, devices)


class _Exporter(Walker):
    def __init__(self, tar: tarfile.TarFile, record: Recorded, root: Path) -> None:
        super().__init__()
        self.tar = tar
        self.egid = os.getegid()
        self.modes = record.modes
        self.devices = record.devices
        self.device_inodes = _placeholders(root, record.devices)
        #: The first path written of each inode with more than one link.
        self.links: dict[tuple[int, int], str] = {}

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        if self.euid == 0:
            return st.st_uid, st.st_gid
        uid = 0 if st.st_uid == self.euid else st.st_uid
        gid = 0 if st.st_gid == self.egid else st.st_gid
        return uid, gid

    def info(self, path: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = self.mode(path, st)
        info.uid, info.gid = self.owner(st)
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        return info

    def mode(self, path: str, st: os.stat_result) -> int:
        """The image's mode where the unpacker had to change it, unless a program in the
        container has changed it since (then the disk is the truth)."""
        now = stat.S_IMODE(st.st_mode)
        image = self.modes.get(path)
        if image is None:
            return now
        from ucore.storage.extract import rootless_mode

        return image if now == rootless_mode(image, stat.S_ISDIR(st.st_mode)) else now

    def entry(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> Optional[int]:
        """Write one entry; for a directory, return its descriptor to walk into. The first
        path of an inode with several links is written as what it is, the others as hardlinks
        to it, whatever it is (as tar does)."""
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self.tar.addfile(self.info(path, st, tarfile.DIRTYPE))
            return self.open_dir(dir_fd, name, path, st)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            info = self.info(path, st, tarfile.LNKTYPE)
            info.linkname = self.links[key]
            self.tar.addfile(info)
            return None
        device = None
        if stat.S_ISREG(mode) and st.st_size == 0:
            device = self.device_inodes.get(key) or self.devices.get(path)
        if device is not None:
            info = self.info(
                path, st, tarfile.CHRTYPE if device["type"] == "char" else tarfile.BLKTYPE
            )
            with contextlib.suppress(TypeError, ValueError):
                info.mode = int(device.get("mode", "0600"), 8) & 0o7777
                info.devmajor, info.devminor = int(device["major"]), int(device["minor"])
            self.tar.addfile(info)
        elif stat.S_ISREG(mode):
            with os.fdopen(self.open_file(dir_fd, name, st), "rb") as f:
                info = self.info(path, st, tarfile.REGTYPE)
                info.size = st.st_size
                self.tar.addfile(info, f)
        elif stat.S_ISLNK(mode):
            info = self.info(path, st, tarfile.SYMTYPE)
            info.mode = 0o777
            info.linkname = os.readlink(name, dir_fd=dir_fd)
            self.tar.addfile(info)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info = self.info(path, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.tar.addfile(info)
        elif stat.S_ISFIFO(mode):
            self.tar.addfile(self.info(path, st, tarfile.FIFOTYPE))
        else:
            return None  # sockets are not archived (as tar and docker export do)
        if st.st_nlink > 1:
            self.links[key] = path
        return None


def _placeholders(root: Path, devices: dict[str, dict[str, Any]]) -> dict[tuple[int, int], Any]:
    """The recorded device nodes by inode, so that the first of their hardlinks the walk
    meets is written as the device; only a placeholder still at its own path counts (each
    directory on the way opened without following a symlink), as the walk would find it."""
    found: dict[tuple[int, int], Any] = {}
    for path, device in devices.items():
        *parents, base = path.split("/")
        try:
            fd = inroot.open_dir(root, parents)
        except OSError:
            continue
        try:
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        finally:
            os.close(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            found[(st.st_dev, st.st_ino)] = device
    return found


def export(container: Container, out: IO[bytes]) -> None:
    """Write the container's root filesystem to ``out`` as a PAX tarball."""
    record = recorded(container)
    root = Path(container.root)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _Exporter(tar, record, root).walk(root)
    except OSError as exc:
        if exc.errno in (errno.EPIPE,):
            raise
        what = f"reading {exc.filename}" if exc.filename else f"exporting {container.id}"
        raise store_error(exc, what) from exc


# --- import ---------------------------------------------------------------------------------


class _Tee:
    """Reads the input and writes every byte read into the blob being stored."""

    def __init__(self, head: bytes, src: IO[bytes], writer: Any) -> None:
        self.head = head
        self.src = src
        self.writer = writer

    def read(self, n: int = -1) -> bytes:
        if self.head:
            cut = len(self.head) if n < 0 else n
            data, self.head = self.head[:cut], self.head[cut:]
        else:
            data = self.src.read(n if n >= 0 else _CHUNK)
        if data:
            self.writer.write(data)
        return data

    def readable(self) -> bool:
        return True


class _Hashing:
    """The uncompressed stream, hashed as tarfile reads it: the sha256 is the diff_id."""

    def __init__(self, src: Any) -> None:
        self.src = src
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.src.read(n if n >= 0 else _CHUNK)
        self.hasher.update(data)
        self.size += len(data)
        return data


@dataclass(frozen=True)
class Layer:
    """A layer blob stored by import, and the uncompressed digest its config must list."""

    descriptor: Descriptor
    diff_id: Digest
    new: bool


def store_layer(store: Store, stream: IO[bytes]) -> Layer:
    """Store a (possibly gzip or zstd compressed) tarball as a layer blob, proving it is a tar.
    What an import or load killed outright left in ``tmp/`` goes first: a tarball's worth of
    partial blob must not count against a quota until the next pull."""
    store.ensure().cleanup_tmp()
    try:
        head = stream.read(4)
    except OSError as exc:
        raise StoreError(f"import: cannot read the input: {exc.strerror or exc}") from None
    if not head:
        raise IntegrityError("import: the input is empty, not a tar archive")
    kind = compression(head)
    writer = store.writer(None, None).open()
    try:
        tee = cast(IO[bytes], _Tee(head, stream, writer))
        inner: Any
        if kind == "gzip":
            inner = gzip.GzipFile(fileobj=tee, mode="rb")
        elif kind == "zstd":
            import zstandard

            inner = zstandard.ZstdDecompressor().stream_reader(tee, read_across_frames=True)
        else:
            inner = tee
        hashing = _Hashing(inner)
        members = 0
        with open_stream(cast(IO[bytes], hashing)) as tar:
            for _member in tar:
                members += 1
        while hashing.read(_CHUNK):
            pass
        while tee.read(_CHUNK):
            pass
    except (tarfile.TarError, BadLayer, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        writer.discard()
        raise IntegrityError(f"import: not a valid tar archive: {exc}".splitlines()[0]) from None
    except BaseException as exc:
        writer.discard()
        if type(exc).__name__ == "ZstdError":
            raise IntegrityError(f"import: corrupt zstd data: {exc}") from None
        if isinstance(exc, OSError) and not isinstance(exc, UcoreError):
            raise store_error(exc, "importing the tarball") from exc
        raise
    if members == 0:
        writer.discard()
        raise IntegrityError("import: the tar archive is empty")
    existed = store.has_blob(Digest(writer.hasher.hexdigest()))
    digest = writer.publish()
    return Layer(
        descriptor=Descriptor(LAYER_TYPES[kind], digest, writer.written),
        diff_id=Digest(hashing.hasher.hexdigest()),
        new=not existed,
    )


def _config(layer: Layer, platform: Platform, source: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": now,
        "config": {"Env": [IMPORT_ENV], "Cmd": list(IMPORT_CMD)},
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id)]},
        "history": [{"created": now, "created_by": f"ucore import {source}"}],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return config


def build_image(
    store: Store, layer: Layer, ref: ImageRef, source: str
) -> tuple[Image, set[Digest]]:
    """Write the config and manifest of a one-layer image; returns it and the blobs that are
    new in the store (for the caller to drop should it not keep the image)."""
    platform = Platform.host()
    new: set[Digest] = {layer.descriptor.digest} if layer.new else set()
    config_raw = json.dumps(_config(layer, platform, source), sort_keys=True).encode()
    config_digest = Digest(hashlib.sha256(config_raw).hexdigest())
    if not store.has_blob(config_digest):
        new.add(config_digest)
    store.put_bytes(config_raw)
    manifest_raw = mf.write_manifest(config_digest, len(config_raw), [layer.descriptor.to_json()])
    manifest_digest = Digest(hashlib.sha256(manifest_raw).hexdigest())
    if not store.has_blob(manifest_digest):
        new.add(manifest_digest)
    store.put_bytes(manifest_raw)
    image = Image(
        ref=ref,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layers=(layer.descriptor,),
        platform=platform,
    )
    return image, new


def import_image(store: Store, stream: IO[bytes], ref: ImageRef, source: str) -> Image:
    """A rootfs tarball into the store as the one-layer image ``ref`` (replacing what the
    name pointed at, as ``docker import`` does, unless that is protected)."""
    store.ensure()
    record = store.get_ref(ref)
    if record is not None and record.get("protected"):
        raise UsageError(f"image {ref.familiar} is protected: 'ucore unprotect' it first")
    with store.shared_lock("gc"):
        layer = store_layer(store, stream)
        new: set[Digest] = {layer.descriptor.digest} if layer.new else set()
        try:
            image, new = build_image(store, layer, ref, source)
            store.set_ref(
                ref,
                {
                    "manifest": str(image.manifest_digest),
                    "index": None,
                    "platform": str(image.platform),
                    "pulled": time.time(),
                    "imported": source,
                },
            )
        except BaseException:
            images.drop_unused(store, new)
            raise
    return image


def import_container(
    session: Session, stream: IO[bytes], ref: ImageRef, source: str, name: Optional[str]
) -> Container:
    """A rootfs tarball straight into a new container, through the unpacker; no image is kept
    (the container has its own copy of the config), and no blob that no image uses."""
    from ucore.storage import containers

    store = session.store.ensure()
    with store.shared_lock("gc"):
        layer = store_layer(store, stream)
        new: set[Digest] = {layer.descriptor.digest} if layer.new else set()
        try:
            image, new = build_image(store, layer, ref, source)
            container = containers.create(session, image, name)
        finally:
            images.drop_unused(store, new)
    return container
