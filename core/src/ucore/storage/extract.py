"""Applying image layers to a root filesystem (safety rules 1 to 8 for unpacking).

:mod:`tarfile` is used only to parse the stream (mode ``"r|"``); every file operation goes
through :class:`~ucore.storage.rootfs.RootFS`, relative to a directory descriptor inside
the root and without following the final component. The bytes are hashed as they are read: the
compressed stream against the layer's digest, the tar stream against its ``diff_id``, both read
to the end after the last entry, so that a layer is only ever accepted whole.

Unprivileged, the tree is made so that its owner can always traverse, write and remove it:
directories get owner ``rwx``, set-id bits are dropped and device nodes become empty files. The
modes the image asked for are recorded in :func:`modes_path` so that an export can restore them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Literal, Optional, TypeVar, cast

from ucore.log import get_logger
from ucore.storage.manifest import config_diff_ids, read_config
from ucore.storage.rootfs import DIR_FLAGS, Dir, PathError, RootFS, join, show
from ucore.storage.store import Store
from ucore.storage.stream import BadLayer, LayerStream
from ucore.values.errors import IntegrityError, NotFoundError, store_error
from ucore.values.oci import Descriptor, Digest, Image

if TYPE_CHECKING:
    from typing_extensions import Self

log = get_logger(__name__)

T = TypeVar("T")
Stage = Callable[[str, str], contextlib.AbstractContextManager[None]]

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
#: Prefix of aufs's own bookkeeping entries (``.wh..wh.plnk``), skipped as Docker does.
AUFS_META = ".wh..wh."
_SETID = stat.S_ISUID | stat.S_ISGID
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
#: Seconds from the epoch beyond which a time in nanoseconds no longer fits 64 bits.
_MAX_SECONDS = (1 << 63) // 1_000_000_000
#: tarfile's read-ahead: large enough for few calls per megabyte, small enough that the copy it
#: makes of its buffer on every header read stays cheap.
_TAR_BUFFER = 64 << 10
_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_XATTR = "SCHILY.xattr."
#: Extended attributes an unprivileged user may not set (safety rule 6).
_PRIVILEGED_XATTRS = ("security.", "trusted.")
_XATTR_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.E2BIG, errno.ERANGE)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one image may unpack to (safety rule 7), so a decompression bomb or a
    header that claims gigabytes stops with a clear error instead of filling the disk or memory.
    """

    #: Uncompressed bytes of all layers together (tar stream, headers and padding included),
    #: and bytes of all the files they write (a sparse file writes more than its stream holds).
    max_bytes: int = 64 << 30
    #: Entries of all layers together.
    max_members: int = 10_000_000
    #: Size of one extended header (PAX, GNU long name); Go's archive/tar allows 1 MiB too.
    max_header: int = 1 << 20


def rootless_mode(mode: int, is_dir: bool) -> int:
    """The mode an unprivileged unpack gives an entry the image wants ``mode`` for: set-id
    bits go, directories get owner ``rwx`` (so the tree can be filled, read and removed) and
    files owner ``rw``, because under root emulation the container's "root" is really the
    user, and images ship files such as a 0000 ``/etc/shadow`` that root could read."""
    return mode & ~_SETID | (0o700 if is_dir else 0o600)


def modes_path(dest: Path) -> Path:
    """The JSON file beside ``dest`` that records what an unprivileged unpack had to change:
    ``{"version": 1, "rootless": bool, "modes": {path: "0755"}, "devices": {path: {...}}}``
    (paths relative to the root; modes as octal strings, as the image gave them)."""
    return dest.with_name(dest.name + ".modes.json")


def normalize(name: str) -> str:
    """A layer's entry name relative to the root: leading ``/``, ``.`` and empty components
    dropped, ``..`` applied lexically; one that climbs out of the root is refused."""
    if "\0" in name:
        raise BadLayer("name contains a NUL byte")
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                raise BadLayer("name climbs out of the root with '..'")
            parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/".join(parts)


def _bounded_tarinfo(max_header: int) -> type[tarfile.TarInfo]:
    """A TarInfo that refuses what :mod:`tarfile` would otherwise take quietly.

    tarfile reads an extended header whole into memory, whatever size it claims; and in the
    middle of an archive it takes a corrupt or partial header for the end of the archive,
    silently dropping the rest (Go's archive/tar, which built most layers, reports both).
    """

    class BoundedTarInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            try:
                info = super().frombuf(buf, encoding, errors)
            except tarfile.HeaderError as exc:
                if not buf or buf.count(0) == tarfile.BLOCKSIZE:
                    raise  # a zero block, or the stream ending between entries: the end
                raise BadLayer(f"malformed or truncated tar header: {exc}") from None
            if info.type in _HEADER_TYPES and info.size > max_header:
                raise BadLayer(f"extended header of {info.size} bytes exceeds {max_header}")
            return info

    return BoundedTarInfo


class _StreamTar(tarfile.TarFile):
    """tarfile keeps every member it reads (for ``getmembers``): a stream of millions of
    entries must not pile up in memory."""

    members: list[tarfile.TarInfo]  # not in typeshed

    def next(self) -> Optional[tarfile.TarInfo]:
        info = super().next()
        self.members.clear()
        return info


def open_stream(
    fileobj: IO[bytes], mode: Literal["r|", "r|*"] = "r|", max_header: int = Limits.max_header
) -> tarfile.TarFile:
    """:mod:`tarfile` reading an untrusted tarball as a stream (``mode`` ``r|`` or ``r|*``),
    as :class:`Unpacker` reads layers: extended headers bounded, a corrupt header an error
    (:class:`BadLayer`), and no list of every member read kept in memory."""
    return _StreamTar.open(
        fileobj=fileobj, mode=mode, tarinfo=_bounded_tarinfo(max_header), bufsize=_TAR_BUFFER
    )


def _mtime_ns(info: tarfile.TarInfo) -> Optional[int]:
    """The entry's mtime in nanoseconds: exact from a PAX record, which tarfile turns into a
    float that cannot hold today's times to the nanosecond. None for a time no file can have
    (infinite, or centuries away): an absurd date is not worth failing over, and turning a
    record such as ``1e999990`` into an integer would take minutes."""
    seconds = Decimal(info.mtime)  # exact, whether tarfile made an int or a float of it
    text = info.pax_headers.get("mtime") if info.pax_headers else None
    if text:
        with contextlib.suppress(ArithmeticError, ValueError):
            seconds = Decimal(text)
    if not seconds.is_finite() or seconds.copy_abs() >= _MAX_SECONDS:
        return None
    return int(seconds.scaleb(9))


def _copy(src: IO[bytes], fd: int, size: int) -> None:
    while size:
        chunk = src.read(min(size, _CHUNK))
        if not chunk:
            raise BadLayer("unexpected end of data")
        size -= len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


class Unpacker:
    """Applies layers, in order, to one root directory.

    Between layers it keeps what an export needs (the modes and devices it could not
    reproduce); within a layer, which paths the layer wrote, since whiteouts must spare them
    (safety rule 5), and the directory times to set once the layer's entries are all in.
    """

    def __init__(self, dest: Path, limits: Limits, rootless: bool) -> None:
        self.limits = limits
        self.rootless = rootless
        self.root = RootFS(dest)
        self._umask = _umask()
        self.modes: dict[str, int] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.entries = 0
        self.files = 0
        self.bytes = 0
        self.tar_bytes = 0
        self._layer = ""
        self._where = ""
        self._touched: set[str] = set()
        self._dir_times: list[tuple[str, Optional[int]]] = []
        self._placeholders: list[str] = []
        self._xattr_failures = 0

    def close(self) -> None:
        self.root.close()

    # --- one layer ----------------------------------------------------------------------------

    def apply(self, blob: Path, desc: Descriptor, diff_id: Digest) -> None:
        """Apply one layer; raises IntegrityError naming the layer and the entry."""
        self._layer = desc.digest.short
        self._where = "at its start"
        self._touched = set()
        self._dir_times = []
        self._placeholders = []
        self._xattr_failures = 0
        budget = self.limits.max_bytes - self.tar_bytes
        try:
            with open(blob, "rb") as raw:
                stream = LayerStream(raw, budget)
                try:
                    self._read(stream, budget)
                    self._where = "after its last entry"
                    packed, plain = stream.finish()
                finally:
                    stream.close()
        except FileNotFoundError as exc:
            if exc.filename == str(blob):
                raise NotFoundError(
                    f"layer {self._layer} is missing from the store (pull the image again)"
                ) from None
            raise self._store_error(exc) from exc
        except (BadLayer, PathError, tarfile.TarError, ValueError, OverflowError) as exc:
            raise self._integrity_error(str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG and exc.filename != str(blob):  # the layer's fault
                raise self._integrity_error("a name or link target is too long") from None
            raise self._store_error(exc) from exc
        self._verify(packed, desc, plain, diff_id)
        self.tar_bytes += plain[1]
        self._report()

    def _read(self, stream: LayerStream, budget: int) -> None:
        with open_stream(cast(IO[bytes], stream), max_header=self.limits.max_header) as tar:
            while True:
                self.root.settle()
                info = tar.next()
                if info is None:
                    break
                self._where = f"entry {show(info.name)}"
                self.entries += 1
                if self.entries > self.limits.max_members:
                    raise BadLayer(f"more than {self.limits.max_members} entries in the image")
                self._entry(tar, info, budget)
                self._where = f"after entry {show(info.name)}"
            self._set_dir_times()

    def _verify(
        self,
        packed: tuple[Digest, int],
        desc: Descriptor,
        plain: tuple[Digest, int],
        diff_id: Digest,
    ) -> None:
        if packed != (desc.digest, desc.size):
            raise IntegrityError(
                f"layer {self._layer}: blob is corrupt in the store ({packed[1]} bytes hashing"
                f" to {packed[0]}, expected {desc.size} bytes, {desc.digest}); run 'ucore verify'"
            )
        if plain[0] != diff_id:
            raise IntegrityError(
                f"layer {self._layer}: uncompressed content {plain[0]} does not match the"
                f" diff_id {diff_id} in the image config"
            )

    def _integrity_error(self, reason: str) -> IntegrityError:
        line = reason.splitlines()[0] if reason else "malformed layer"
        return IntegrityError(f"layer {self._layer}, {self._where}: {line}")

    def _store_error(self, exc: OSError) -> Exception:
        return store_error(exc, f"unpacking layer {self._layer}, {self._where}")

    def _report(self) -> None:
        if self._placeholders:
            log.warning(
                "device nodes became empty files (an unprivileged user cannot create them)",
                layer=self._layer,
                count=len(self._placeholders),
                paths=self._placeholders[:5],
            )
        if self._xattr_failures:
            log.warning(
                "extended attributes this filesystem or user cannot set were skipped",
                layer=self._layer,
                count=self._xattr_failures,
            )

    # --- entries ------------------------------------------------------------------------------

    def _entry(self, tar: tarfile.TarFile, info: tarfile.TarInfo, budget: int) -> None:
        name = normalize(info.name)
        key, _, base = name.rpartition("/")
        if base.startswith(WHITEOUT):
            self._whiteout(key, base)
            return
        if not name:
            self._root_entry(info)
            return
        parent = self.root.lookup(key, create=True)
        assert parent is not None
        self._touch_dir(parent.path)
        path = join(parent.path, base)
        self._touched.add(path)
        if info.isreg():
            # a sparse file's holes are not in the stream, so they count against the contents
            room = min(budget - info.offset_data, self.limits.max_bytes - self.bytes)
            if info.size > room:
                raise BadLayer(
                    f"a {info.size}-byte file exceeds the limit of {self.limits.max_bytes} bytes"
                )
            self._file(tar, info, parent, base, path)
        elif info.isdir():
            self._dir(info, parent, base, name, path)
        elif info.issym():
            self._symlink(info, parent, base)
        elif info.islnk():
            self._hardlink(info, parent, base, path)
        elif info.ischr() or info.isblk() or info.isfifo():
            self._special(info, parent, base, path)
        else:
            raise BadLayer(f"unsupported entry type {info.type!r}")

    def _touch_dir(self, path: str) -> None:
        """Mark a directory and its ancestors as written by this layer: whiteouts spare them."""
        while path and path not in self._touched:
            self._touched.add(path)
            path = path.rpartition("/")[0]

    def _replace(self, parent: Dir, base: str, make: Callable[[], T]) -> T:
        """``make`` the entry; whatever was there before is removed first (tar's semantics)."""
        try:
            return make()
        except FileExistsError:
            self.root.remove(parent, base, removed=self._forget)
            return make()

    def _forget(self, path: str) -> None:
        self.modes.pop(path, None)
        self.devices.pop(path, None)

    def _file(
        self, tar: tarfile.TarFile, info: tarfile.TarInfo, parent: Dir, base: str, path: str
    ) -> None:
        mode = self._mode(info, is_dir=False)
        fd = self._replace(
            parent, base, lambda: os.open(base, _FILE_FLAGS, mode & 0o777, dir_fd=parent.fd)
        )
        self._note(path, info, mode)
        try:
            if info.sparse is not None:  # tarfile fills the holes
                _copy(cast(IO[bytes], tar.extractfile(info)), fd, info.size)
            elif info.size:
                _copy(cast(IO[bytes], tar.fileobj), fd, info.size)
            self._attributes(fd, info, mode, fresh=True)
            self._utime(fd, _mtime_ns(info))
        finally:
            os.close(fd)
        self.files += 1
        self.bytes += info.size

    def _dir(self, info: tarfile.TarInfo, parent: Dir, base: str, key: str, path: str) -> None:
        mode = self._mode(info, is_dir=True)
        try:
            os.mkdir(base, mode & 0o777, dir_fd=parent.fd)
            fresh = True
        except FileExistsError:
            fresh = False
        try:
            fd = os.open(base, DIR_FLAGS, dir_fd=parent.fd)
        except OSError as exc:  # not a directory: replaced, as tar does; a directory is merged
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            self.root.remove(parent, base, removed=self._forget)
            os.mkdir(base, mode & 0o777, dir_fd=parent.fd)
            fd = os.open(base, DIR_FLAGS, dir_fd=parent.fd)
            fresh = True
        self.root.remember(key, Dir(fd, path))
        self._note(path, info, mode)
        self._attributes(fd, info, mode, fresh)
        self._dir_times.append((path, _mtime_ns(info)))

    def _root_entry(self, info: tarfile.TarInfo) -> None:
        if not info.isdir():
            raise BadLayer("entry would replace the root directory")
        mode = self._mode(info, is_dir=True)
        self._note("", info, mode)
        self._attributes(self.root.fd, info, mode, fresh=False)
        self._dir_times.append(("", _mtime_ns(info)))

    def _symlink(self, info: tarfile.TarInfo, parent: Dir, base: str) -> None:
        if not info.linkname:
            raise BadLayer("symlink with an empty target")
        self._replace(parent, base, lambda: os.symlink(info.linkname, base, dir_fd=parent.fd))
        if not self.rootless:
            os.chown(base, info.uid, info.gid, dir_fd=parent.fd, follow_symlinks=False)
        self._utime_name(parent, base, _mtime_ns(info))

    def _hardlink(self, info: tarfile.TarInfo, parent: Dir, base: str, path: str) -> None:
        """Link to another entry, resolved inside the root. The link takes no metadata from its
        header: the inode is shared, and when the target is a symlink a chmod through the link
        would reach whatever the symlink names (safety rule 4)."""
        target = normalize(info.linkname)
        if not target:
            raise BadLayer("hard link to the root directory")
        tkey, _, tbase = target.rpartition("/")
        tparent = self.root.lookup(tkey, create=False)
        if tparent is None:
            raise BadLayer(f"hard link target {show(info.linkname)} does not exist")
        if join(tparent.path, tbase) == path:
            return
        try:
            kind = os.stat(tbase, dir_fd=tparent.fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise BadLayer(f"hard link target {show(info.linkname)} does not exist") from None
        if stat.S_ISDIR(kind):
            raise BadLayer(f"hard link to directory {show(info.linkname)}")

        def link() -> None:
            os.link(tbase, base, src_dir_fd=tparent.fd, dst_dir_fd=parent.fd, follow_symlinks=False)

        self._replace(parent, base, link)

    def _special(self, info: tarfile.TarInfo, parent: Dir, base: str, path: str) -> None:
        """Device nodes (as root) and FIFOs; unprivileged, a device becomes an empty file."""
        kind = stat.S_IFIFO if info.isfifo() else stat.S_IFCHR if info.ischr() else stat.S_IFBLK
        mode = self._mode(info, is_dir=False)
        if kind != stat.S_IFIFO and self.rootless:
            self._placeholder(info, parent, base, path, mode)
            return
        device = os.makedev(info.devmajor, info.devminor) if kind != stat.S_IFIFO else 0
        self._replace(parent, base, lambda: os.mknod(base, kind | 0o600, device, dir_fd=parent.fd))
        self._note(path, info, mode)
        if not self.rootless:
            os.chown(base, info.uid, info.gid, dir_fd=parent.fd, follow_symlinks=False)
        _chmod_name(parent, base, mode)
        self._utime_name(parent, base, _mtime_ns(info))

    def _placeholder(
        self, info: tarfile.TarInfo, parent: Dir, base: str, path: str, mode: int
    ) -> None:
        fd = self._replace(
            parent, base, lambda: os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent.fd)
        )
        self._note(path, info, mode)
        try:
            os.fchmod(fd, mode)
            self._utime(fd, _mtime_ns(info))
        finally:
            os.close(fd)
        self.devices[path] = {
            "type": "char" if info.ischr() else "block",
            "major": info.devmajor,
            "minor": info.devminor,
            "mode": f"{info.mode & 0o7777:04o}",
        }
        self._placeholders.append(path)

    # --- whiteouts ----------------------------------------------------------------------------

    def _whiteout(self, key: str, base: str) -> None:
        """Delete what lower layers put at ``key/NAME`` (or, opaque, everything they put in
        ``key``), sparing what this layer wrote; a missing path is nothing to delete."""
        if base == OPAQUE:
            d = self.root.lookup(key, create=False)
            if d is not None:
                for child in os.listdir(d.fd):
                    self.root.remove(d, child, spare=self._touched, removed=self._forget)
            return
        if base.startswith(AUFS_META):
            return
        victim = base[len(WHITEOUT) :]
        if victim in ("", ".", ".."):
            raise BadLayer("invalid whiteout name")
        parent = self.root.lookup(key, create=False)
        if parent is not None:
            self.root.remove(parent, victim, spare=self._touched, removed=self._forget)

    # --- metadata -----------------------------------------------------------------------------

    def _mode(self, info: tarfile.TarInfo, is_dir: bool) -> int:
        """The mode to give an entry (see :func:`rootless_mode`)."""
        mode = info.mode & 0o7777
        return rootless_mode(mode, is_dir) if self.rootless else mode

    def _note(self, path: str, info: tarfile.TarInfo, mode: int) -> None:
        """Record the image's mode where the entry, now in place, got another one."""
        wanted = info.mode & 0o7777
        if mode != wanted:
            self.modes[path] = wanted
        elif self.modes:
            self.modes.pop(path, None)

    def _attributes(self, fd: int, info: tarfile.TarInfo, mode: int, fresh: bool) -> None:
        """Owner, mode and extended attributes; ``fresh`` when just created with ``mode``'s
        permission bits, which then need no chmod unless the umask took some away."""
        if not self.rootless:
            os.fchown(fd, info.uid, info.gid)  # before the chmod: chown clears set-id bits
        if not fresh or mode & (self._umask | 0o7000):
            os.fchmod(fd, mode)
        if info.pax_headers:
            self._xattrs(fd, info.pax_headers)

    def _xattrs(self, fd: int, headers: Mapping[str, str]) -> None:
        for key, value in headers.items():
            if not key.startswith(_XATTR):
                continue
            name = key[len(_XATTR) :]
            if self.rootless and name.startswith(_PRIVILEGED_XATTRS):
                continue
            try:
                os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                if exc.errno not in _XATTR_UNSUPPORTED:
                    raise
                self._xattr_failures += 1

    @staticmethod
    def _utime(fd: int, mtime: Optional[int]) -> None:
        if mtime is not None:
            with contextlib.suppress(OverflowError):  # beyond this platform's time_t
                os.utime(fd, ns=(mtime, mtime))

    @staticmethod
    def _utime_name(parent: Dir, base: str, mtime: Optional[int]) -> None:
        if mtime is not None:
            with contextlib.suppress(OverflowError):
                os.utime(base, ns=(mtime, mtime), dir_fd=parent.fd, follow_symlinks=False)

    def _set_dir_times(self) -> None:
        """Directory times last: every entry made inside a directory changed its mtime."""
        # parents first (resolutions build on them); of one directory's entries, the last wins
        for path, mtime in sorted(self._dir_times, key=lambda item: item[0]):
            if not path:
                self._utime(self.root.fd, mtime)
                continue
            key, _, base = path.rpartition("/")
            parent = self.root.lookup(key, create=False)
            if parent is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._utime_name(parent, base, mtime)
            self.root.settle()

    # --- the result ---------------------------------------------------------------------------

    def finish(self, dest: Path) -> dict[str, Any]:
        """Write :func:`modes_path` and return the statistics."""
        record = {
            "version": 1,
            "rootless": self.rootless,
            "modes": {path: f"{mode:04o}" for path, mode in sorted(self.modes.items())},
            "devices": dict(sorted(self.devices.items())),
        }
        target = modes_path(dest)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1)
        except OSError as exc:
            raise store_error(exc, f"writing {target}") from exc
        return {
            "entries": self.entries,
            "files": self.files,
            "bytes": self.bytes,
            "tar_bytes": self.tar_bytes,
            "modes": dict(self.modes),
            "devices": dict(self.devices),
            "modes_file": str(target),
        }


def _umask() -> int:
    """The umask, read without changing it (``os.umask`` would, for every thread); when it
    cannot be read, all bits, so that every entry gets an explicit chmod."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o777


def _chmod_name(parent: Dir, base: str, mode: int) -> None:
    """chmod without following a symlink, for nodes that cannot be opened (devices, FIFOs).

    glibc before 2.32 lacks ``fchmodat(AT_SYMLINK_NOFOLLOW)``; there we do what newer glibc
    does: an ``O_PATH`` descriptor, checked not to be a symlink, changed through ``/proc``.
    """
    try:
        os.chmod(base, mode, dir_fd=parent.fd, follow_symlinks=False)
        return
    except (NotImplementedError, ValueError):
        pass
    fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise BadLayer("refusing to chmod a symlink")
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def diff_ids(store: Store, image: Image) -> list[Digest]:
    """The image config's ``rootfs.diff_ids``, one per layer of the manifest."""
    ids = config_diff_ids(read_config(store, image))
    if len(ids) != len(image.layers):
        raise IntegrityError(
            f"image config {image.config_digest.short} lists {len(ids)} diff_ids for"
            f" {len(image.layers)} layers"
        )
    return ids


@contextlib.contextmanager
def _no_stage(_stage: str, _subject: str) -> Iterator[None]:
    yield


def unpack_image(
    store: Store,
    image: Image,
    dest: Path,
    *,
    limits: Optional[Limits] = None,
    rootless: Optional[bool] = None,
    stage: Stage = _no_stage,
) -> dict[str, Any]:
    """Flatten ``image``'s layers into ``dest``, an empty directory the caller made.

    On error ``dest`` holds a partial tree, which the caller removes (unprivileged, every
    directory in it is writable by its owner, so ``shutil.rmtree`` can).

    :param limits: bounds on the unpacked size; :class:`Limits` defaults when None.
    :param rootless: unpack as an unprivileged user would (see the module docstring); by
        default when not running as root.
    :param stage: ``session.stage``, to time each layer (``unpack.layer`` events).
    :returns: ``entries``, ``files``, ``bytes`` (of file contents), ``tar_bytes``, the
        ``modes`` and ``devices`` an unprivileged unpack could not reproduce, and
        ``modes_file``, where those are recorded (:func:`modes_path`).
    """
    ids = diff_ids(store, image)
    with os.scandir(dest) as entries:
        if any(entries):
            raise ValueError(f"unpack destination {dest} is not empty")
    try:
        unpacker = Unpacker(
            dest, limits or Limits(), os.geteuid() != 0 if rootless is None else rootless
        )
    except OSError as exc:
        raise store_error(exc, f"opening {dest}") from exc
    try:
        for number, (desc, diff_id) in enumerate(zip(image.layers, ids), 1):
            with stage("unpack.layer", f"{desc.digest.short} ({number}/{len(ids)})"):
                unpacker.apply(store.blob_path(desc.digest), desc, diff_id)
        return unpacker.finish(dest)
    finally:
        unpacker.close()
