"""The local store: content-addressed blobs, image references, room for containers.

Built for shared cluster filesystems (GPFS, Lustre, NFS) with many batch jobs at once:

* every write goes to a temporary file named with host and pid, is fsynced and then published
  with an atomic rename, so a ``kill -9`` at any instant leaves nothing partial visible;
* a blob's name is its verified sha256, so two jobs publishing the same blob write the same bytes;
* locks only avoid duplicate downloads; correctness never depends on them, because cluster
  filesystems weaken ``flock``. Where ``flock`` fails outright (NFS without a lock manager),
  the store records the fact once (``locks/unsupported``), so that of the hundreds of jobs of
  an array only the first says so as a warning; the others say it at info level.

A user's store may sit on a *site store*: an administrator's store that everyone reads and no
one but its owner writes (see :meth:`Store.open`). References and blobs the user's store
lacks are read from it; nothing is ever written there, so containers, credentials and locks
stay in the user's own store. The user's own reference of a name wins over the site's: it
exists only because the user pulled, loaded or tagged it, and the containers already made
from it must keep meaning what they meant when the administrator adds that name later.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, Union
from urllib.parse import quote, unquote

from ucore.log import get_logger
from ucore.storage import leases
from ucore.storage.leases import HOST, STALE_FOREIGN, pid_alive
from ucore.values.errors import IntegrityError, NotFoundError, StoreError, store_error

if TYPE_CHECKING:
    import hashlib

    # Imported where values are built: ``ucore run`` opens the store but builds no digest.
    from ucore.values.oci import Digest, ImageRef

log = get_logger(__name__)

_PART = re.compile(r"(?P<hex>[0-9a-f]{64})\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.part")
_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?:part|[0-9a-f]{8}\.tmp)$")
_CHUNK = 1 << 20
#: A reference or container record larger than this was not written by ucore.
MAX_RECORD = 1 << 20


def _sha256(data: bytes = b"") -> hashlib._Hash:
    """hashlib imported on first use: ``ucore run`` opens the store but hashes nothing."""
    import hashlib

    return hashlib.sha256(data)


def _digest(hasher: hashlib._Hash) -> Digest:
    """The digest a finished sha256 names (:mod:`ucore.values.oci` too is imported only here)."""
    from ucore.values.oci import Digest

    return Digest(hasher.hexdigest())


def read_record(path: Path, what: str) -> Any:
    """A small JSON file of the store (a reference, a container's metadata), bounded: a
    damaged one, whatever it holds (garbage, a directory, gigabytes), is one StoreError naming
    ``what``. A missing one raises FileNotFoundError, which callers tell apart."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD + 1)
        if len(data) > MAX_RECORD:
            raise ValueError(f"larger than {MAX_RECORD} bytes")
        return json.loads(data)
    except FileNotFoundError:
        raise
    except RecursionError:  # arrays nested past json's limit: damaged like any other
        raise StoreError(f"unreadable {what}: nested too deeply") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise StoreError(f"unreadable {what}: {reason}") from None


#: What ``flock`` answers on a filesystem that cannot lock at all (NFS mounted ``nolock`` or
#: without a lock manager, some FUSE filesystems), as opposed to a lock someone holds; EBADF
#: is NFS's answer, where ``flock`` is emulated with POSIX locks, to an exclusive lock on a
#: descriptor opened read-only (a container's directory).
_NO_LOCKS = frozenset(
    {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
)
#: The file recording that locks do not work in a store: its creator warns, nobody else.
UNSUPPORTED = "unsupported"
#: The file marking a store as a site store, kept readable by all (:meth:`Store.open`).
SITE_MARK = "site-store"


class BlobWriter:
    """Streams one blob to a temporary file, hashing as it goes; ``publish`` verifies and
    renames it into place. Nothing unverified is ever visible under ``blobs/``."""

    def __init__(self, store: Store, expected: Optional[Digest], size: Optional[int]) -> None:
        self.store = store
        self.expected = expected
        self.size = size
        self.hasher = _sha256()
        self.written = 0
        name = f"{expected.hex if expected else 'ingest-' + os.urandom(8).hex()}"
        self.path = store.tmp / f"{name}.{HOST}.{os.getpid()}.part"
        self._file: Optional[IO[bytes]] = None

    def open(self, resume: bool = False) -> BlobWriter:
        """Open the temporary file, adopting a partial download a dead process left behind
        when ``resume`` is set (its bytes are re-hashed, never trusted)."""
        try:
            if resume and self.expected is not None:
                self.store.adopt_partial(self.expected, self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._file = os.fdopen(fd, "r+b")
            while True:
                chunk = self._file.read(_CHUNK)
                if not chunk:
                    break
                self.hasher.update(chunk)
                self.written += len(chunk)
            if self.size is not None and self.written > self.size:
                self.restart()
        except OSError as exc:
            self.discard()
            raise store_error(exc, "writing a temporary file") from exc
        return self

    def restart(self) -> None:
        """Throw away what was written (a server ignored our Range request)."""
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate()
        self.hasher = _sha256()
        self.written = 0

    def write(self, data: Union[bytes, memoryview]) -> None:
        assert self._file is not None
        if self.size is not None and self.written + len(data) > self.size:
            self.discard()
            raise IntegrityError(
                f"blob {self.expected} is larger than the {self.size} bytes its descriptor says"
            )
        try:
            self._file.write(data)
        except OSError as exc:
            self.discard()
            raise store_error(exc, f"writing blob {self.expected or ''}") from exc
        self.hasher.update(data)
        self.written += len(data)

    def publish(self) -> Digest:
        assert self._file is not None
        actual = _digest(self.hasher)
        try:
            if self.size is not None and self.written != self.size:
                raise IntegrityError(
                    f"blob {self.expected}: got {self.written} bytes, expected {self.size}"
                )
            if self.expected is not None and actual != self.expected:
                raise IntegrityError(f"digest mismatch: expected {self.expected}, got {actual}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self.path, 0o444)
            os.replace(self.path, self.store.blobs / actual.hex)
        except OSError as exc:
            self.discard()
            raise store_error(exc, f"publishing blob {actual}") from exc
        except IntegrityError:
            self.discard()
            raise
        return actual

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        """Keep the partial file for a later resume (an interrupted download). Closing flushes
        what is buffered, which fails again on the full disk that brought us here: the file is
        closed all the same, and a resume re-hashes whatever reached it."""
        if self._file is not None and not self._file.closed:
            with contextlib.suppress(OSError):
                self._file.close()


class Store:
    """The directory tree under ``$UCORE_DIR`` (default ``~/.ucore``), private to the user,
    over an optional read-only site store (``site``). A store that is itself the site store
    (``shared``) keeps what users read (``blobs/``, ``refs/``) readable by all."""

    def __init__(self, root: Path, site: Optional[Store] = None, shared: bool = False) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.locks = root / "locks"
        self.refs = root / "refs"
        self.containers = root / "containers"
        self.shared = shared
        self._site = site
        self._site_checked = False
        self._locks_noted = False

    @classmethod
    def open(cls, root: Path, site_store: Optional[Path]) -> Store:
        """The user's store over the site store ``site_store``; the site store itself (kept
        readable by all) when ``root`` is it: that is how its administrator fills it
        (``UCORE_DIR=<site store> ucore pull IMAGE``). A store once used so is marked
        (:data:`SITE_MARK`) and stays readable by all even when its administrator forgets
        to set ``site_store``: made private, it would fail every user at once."""
        if site_store is not None and os.path.realpath(root) == os.path.realpath(site_store):
            return cls(root, shared=True)
        site = cls(site_store) if site_store is not None else None
        return cls(root, site=site, shared=os.path.exists(root / SITE_MARK))

    @property
    def site(self) -> Optional[Store]:
        """The site store, once checked to be one that only its owners can write (a store
        anyone may write to could hand every user a planted image); None when there is none
        or its directory does not exist (not mounted on this node: nothing is found there)."""
        site = self._site
        if site is None or self._site_checked:
            return site
        try:
            st = os.stat(site.root)
        except (FileNotFoundError, NotADirectoryError):
            log.info("the site store does not exist", site_store=str(site.root))
            self._site = None
            return None
        except OSError as exc:
            raise store_error(exc, f"opening the site store {site.root}") from exc
        if st.st_mode & 0o002:
            raise StoreError(
                f"the site store {site.root} can be written by anyone: refusing to read images"
                " from it (its administrator should make it writable by its owner only)"
            )
        self._site_checked = True
        return site

    def ensure(self) -> Store:
        """Make the store's directories, and make the user's own store private again (0700)
        if it was opened up. Another user's store shared read-only is left as its owner made
        it (its containers still run); one that others may write to is refused.

        The site store (``shared``) is the exception: its root, ``blobs/`` and ``refs/`` are
        made readable by all (0755, and its references 0644), whatever the administrator's
        umask; its ``tmp/``, ``locks/``, ``containers/`` and credentials stay private."""
        path = self.root
        public = 0o755 if self.shared else 0o700
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            st = os.stat(path)
            if st.st_uid == os.geteuid():
                if st.st_mode & 0o777 != public:
                    os.chmod(path, public)
            elif st.st_mode & 0o022:
                raise StoreError(
                    f"the store {path} belongs to another user and others can write to it:"
                    " refusing to use it (set UCORE_DIR to a directory of your own)"
                )
            for path in (self.blobs.parent, self.blobs, self.refs):
                self._make_dir(path, public)
            for path in (self.tmp, self.locks, self.containers):
                path.mkdir(mode=0o700, exist_ok=True)
            if self.shared:
                self._open_refs()
                if not os.path.exists(self.root / SITE_MARK):
                    fd = os.open(self.root / SITE_MARK, os.O_WRONLY | os.O_CREAT, 0o644)
                    os.fchmod(fd, 0o644)
                    os.close(fd)
        except OSError as exc:
            raise store_error(exc, f"creating the store directory {path}") from exc
        return self

    @staticmethod
    def _make_dir(path: Path, mode: int) -> None:
        """A directory of the store with exactly ``mode`` when it is ours (mkdir's mode is
        cut by the umask, and a private store made a site store must be opened up)."""
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.stat(path)
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != mode:
            os.chmod(path, mode)

    def _open_refs(self) -> None:
        """References written while the site store was still a private store (0600) made
        readable, so that users do not find a name they cannot read."""
        for name in self._names(self.refs):
            path = self.refs / name
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o044 != 0o044:
                os.chmod(path, 0o644)

    # --- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        """Where to read the blob: the user's own copy, else the site store's; the own path
        when neither has it (what an error about it names). Blobs are written only to the
        own store (``blobs/``)."""
        own = self.blobs / digest.hex
        site = self.site
        if site is not None and not os.path.lexists(own) and site.has_blob(digest):
            return site.blob_path(digest)
        return own

    def has_blob(self, digest: Digest, size: Optional[int] = None) -> bool:
        """Whether the blob can be read here or in the site store: a blob the site holds is
        not downloaded again (if the site later drops it, a pull fetches it back)."""
        try:
            st = os.stat(self.blobs / digest.hex, follow_symlinks=False)
        except FileNotFoundError:
            site = self.site
            return site is not None and site.has_blob(digest, size)
        return size is None or st.st_size == size

    def read_blob(self, digest: Digest, limit: int) -> bytes:
        """Read a small blob (manifest, config) and check it against its name."""
        try:
            with open(self.blob_path(digest), "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is missing from the store") from None
        except OSError as exc:
            raise store_error(exc, f"reading blob {digest}") from exc
        if len(data) > limit:
            raise IntegrityError(f"blob {digest} exceeds {limit} bytes")
        if _sha256(data).hexdigest() != digest.hex:
            raise IntegrityError(f"blob {digest} is corrupt in the store (run 'ucore verify')")
        return data

    def put_bytes(self, data: bytes, expected: Optional[Digest] = None) -> Digest:
        digest = _digest(_sha256(data))
        if expected is not None and digest != expected:
            raise IntegrityError(f"digest mismatch: expected {expected}, got {digest}")
        if self.has_blob(digest, len(data)):
            return digest
        writer = BlobWriter(self, digest, len(data)).open()
        writer.write(data)
        return writer.publish()

    def writer(self, digest: Optional[Digest], size: Optional[int]) -> BlobWriter:
        return BlobWriter(self, digest, size)

    def hash_blob(self, digest: Digest) -> tuple[Digest, int]:
        """Re-hash a stored blob (``ucore verify``)."""
        hasher = _sha256()
        size = 0
        with open(self.blob_path(digest), "rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
        return _digest(hasher), size

    def adopt_partial(self, digest: Digest, mine: Path) -> None:
        """Take over the partial download of ``digest`` that a dead process on this host left."""
        if mine.exists():
            return
        for entry in os.scandir(self.tmp):
            m = _PART.fullmatch(entry.name)
            if not m or m["hex"] != digest.hex or m["host"] != HOST:
                continue
            if not pid_alive(int(m["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(entry.path, mine)
                    log.info("resuming partial download", digest=str(digest))
                    return

    def cleanup_tmp(self) -> None:
        """Remove what dead processes left in ``tmp/``. A partial blob of a dead process on
        this host is kept (for a day) so that the next pull of that blob resumes it."""
        now = time.time()
        try:
            entries = list(os.scandir(self.tmp))
        except FileNotFoundError:
            return
        for entry in entries:
            m = _OWNER.search(entry.name)
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if m and m["host"] == HOST:
                if pid_alive(int(m["pid"])):
                    continue
                if _PART.fullmatch(entry.name) and age < STALE_FOREIGN:
                    continue
            elif age < STALE_FOREIGN:
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    # --- locks ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, what: str, notify: Callable[[str], None]) -> Iterator[None]:
        """Hold an advisory lock to avoid duplicate work; ``notify`` is told who holds it when
        we have to wait. Where the filesystem cannot lock, a lock file stands in for it
        (:meth:`_lock_file`)."""
        fd = self._open_lock(name)
        try:
            locked = self._wait_for_flock(fd, what, notify)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            with self._lock_file(name):
                yield
            return
        try:
            with contextlib.suppress(OSError):
                os.pwrite(fd, f"{HOST} pid {os.getpid()}".ljust(96).encode(), 0)
            yield
        finally:
            os.close(fd)

    def _wait_for_flock(self, fd: int, what: str, notify: Callable[[str], None]) -> bool:
        """Wait for the exclusive ``flock``; False when the filesystem cannot lock."""
        told = False
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if not told and time.monotonic() - started > 2:
                    holder = os.pread(fd, 128, 0).decode(errors="replace").strip()
                    notify(f"waiting for {what}, locked by {holder or 'another process'}")
                    told = True
                time.sleep(0.05)
            except OSError as exc:
                self.locks_fail(exc)
                return False

    @contextlib.contextmanager
    def _lock_file(self, name: str) -> Iterator[None]:
        """:meth:`lock` without ``flock``: a file made with ``O_EXCL`` (atomic on NFS too),
        holding its owner's host and pid, waited for while its owner lives (on another host:
        for a day). As the lock only saves work, what can go wrong here (two processes
        taking over a dead owner's file at once) costs a duplicate download, nothing more.
        Waiting is said at info level: on such a filesystem, the tasks of an array queue here
        for every blob."""
        path = self.locks / f"{name}.held"
        mine = f"{HOST} {os.getpid()} {os.urandom(4).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        told = False
        while True:
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                owner = self._lock_owner(path)
                if owner is None:
                    continue  # released meanwhile, or taken over: try again at once
                if not told:
                    log.info("waiting for a lock file", lock=path.name, holder=owner)
                    told = True
                time.sleep(0.05)
                continue
            except OSError as exc:
                raise store_error(exc, f"making lock file {path}") from exc
            with contextlib.suppress(OSError):
                os.write(fd, mine.encode())
            os.close(fd)
            break
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                if path.read_text() == mine:
                    os.unlink(path)

    def _lock_owner(self, path: Path) -> Optional[str]:
        """Who holds the lock file ``path``; None when nobody does any more (it is gone, or
        its owner is, and it has been taken out of the way)."""
        try:
            text = path.read_text()
            age = time.time() - os.lstat(path).st_mtime
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        except OSError as exc:
            raise store_error(exc, f"reading lock file {path}") from exc
        host, _, rest = text.partition(" ")
        pid = rest.split(" ")[0]
        if not text:  # being written, or its maker died before it could write it
            stale = age > 60
        elif host == HOST:
            stale = not (pid.isdigit() and pid_alive(int(pid)))
        else:
            stale = age > STALE_FOREIGN
        if not stale:
            return text or "another process"
        aside = self.tmp / f"{path.name}.{HOST}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, aside)
            if aside.read_text() != text:  # a fresh one, taken by mistake: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
            os.unlink(aside)
        return None

    def _open_lock(self, name: str) -> int:
        """The lock file, never followed through a symlink; one that cannot be opened (a
        symlink, a directory, a read-only store) is a StoreError naming it."""
        path = self.locks / f"{name}.lock"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise store_error(exc, f"opening lock {path}") from exc

    @contextlib.contextmanager
    def shared_lock(self, name: str, exclusive: bool = False) -> Iterator[bool]:
        """A reader/writer lock; yields whether it was obtained (never waits for exclusive).
        Where the filesystem cannot lock, leases stand in for it (:meth:`_leased`)."""
        fd = self._open_lock(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except OSError as exc:
            os.close(fd)
            self.locks_fail(exc)
            with self._leased(name, exclusive) as got:
                yield got
            return
        try:
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _leased(self, name: str, exclusive: bool) -> Iterator[bool]:
        """:meth:`shared_lock` without ``flock``: readers (pull, create, import, load) and
        writers (prune, rmi) each hold a lease (:mod:`ucore.storage.leases`) and then look for the
        other side's. A writer that finds a reader gives up, as it never waits; a reader that
        finds a writer waits for it to finish, as ``LOCK_SH`` would."""
        with leases.held(self.locks, f"{name}.{'writer' if exclusive else 'reader'}"):
            if exclusive:
                yield not leases.others(self.locks, f"{name}.reader")
                return
            while leases.others(self.locks, f"{name}.writer"):
                time.sleep(0.05)
            yield True

    def locks_fail(self, exc: OSError) -> None:
        """A lock could not be taken for a reason other than someone holding it. Where that
        says the filesystem cannot lock, the store records it: the process that records it
        first warns, every later one (the other tasks of a job array, later jobs) says it at
        info level, so a job log holds one warning, not one per task."""
        if exc.errno not in _NO_LOCKS or self._locks_noted:
            return
        self._locks_noted = True
        reason = exc.strerror or str(exc)
        try:
            fd = os.open(
                self.locks / UNSUPPORTED,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError:  # recorded before (or cannot be: then it is not news either)
            log.info("file locks do not work in the store", store=str(self.root), error=reason)
            return
        with contextlib.suppress(OSError):
            os.write(fd, f"{HOST} pid {os.getpid()}: {reason}\n".encode())
        os.close(fd)
        log.warning(
            f"file locks do not work in the store {self.root} ({reason}): ucore uses lock"
            " files of its own instead; concurrent jobs may download a blob more than once",
        )

    # --- references -------------------------------------------------------------------------

    def _ref_path(self, ref: ImageRef) -> Path:
        return self.refs / quote(str(ref), safe="")

    def write_json_atomic(self, path: Path, data: Any, mode: int = 0o600) -> None:
        tmp = self.tmp / f"{path.name[:100]}.{HOST}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            if mode != 0o600:  # a reference of the site store, for all to read
                os.fchmod(fd, mode)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise store_error(exc, f"writing {path.name}") from exc

    def set_ref(self, ref: ImageRef, record: dict[str, Any]) -> None:
        self.write_json_atomic(
            self._ref_path(ref), {"ref": str(ref), **record}, 0o644 if self.shared else 0o600
        )

    def has_ref(self, ref: ImageRef) -> bool:
        """Whether the reference exists here or in the site store, readable or not (a
        damaged one is still found, so that the command using it can say what is wrong, and
        ``rmi -f`` remove it)."""
        return os.path.lexists(self._ref_path(ref)) or self.in_site(ref)

    def in_site(self, ref: ImageRef) -> bool:
        """Whether ``ref`` is the site store's (the user's store has no reference of it)."""
        site = self.site
        return (
            site is not None
            and not os.path.lexists(self._ref_path(ref))
            and os.path.lexists(site._ref_path(ref))
        )

    def get_ref(self, ref: ImageRef) -> Optional[dict[str, Any]]:
        """The reference's record, the user's own first, else the site store's."""
        record = self._own_ref(ref)
        site = self.site
        if record is None and site is not None:
            return site.get_ref(ref)
        return record

    def _own_ref(self, ref: ImageRef) -> Optional[dict[str, Any]]:
        try:
            data = read_record(self._ref_path(ref), f"reference file of {ref}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not isinstance(data, dict):
            raise StoreError(f"unreadable reference file of {ref}: not a JSON object")
        return data

    def delete_ref(self, ref: ImageRef) -> bool:
        path = self._ref_path(ref)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except IsADirectoryError:  # made in its place by hand: ``rmi -f`` still clears it
            from ucore.storage.trees import remove_tree

            remove_tree(path)
        except OSError as exc:
            raise store_error(exc, f"removing reference {ref}") from exc
        return True

    def list_refs(self) -> list[tuple[ImageRef, Optional[dict[str, Any]]]]:
        """Every reference of this store (not the site store's: what ``prune`` and ``rmi``
        keep blobs for) with its record; None for one that cannot be read, so that one
        damaged reference does not hide the others (:func:`ucore.storage.images.load` of it says
        what is wrong)."""
        from ucore.values.oci import ImageRef

        out: list[tuple[ImageRef, Optional[dict[str, Any]]]] = []
        for entry in sorted(self._names(self.refs)):
            try:
                ref = ImageRef.parse(unquote(entry))
            except Exception:  # noqa: BLE001 - a stray file in refs/ is not fatal
                continue
            try:
                record = self._own_ref(ref)
            except StoreError:
                out.append((ref, None))
                continue
            if record is not None:
                out.append((ref, record))
        return out

    def all_refs(self) -> list[tuple[ImageRef, Optional[dict[str, Any]], bool]]:
        """The references a user can use: this store's, then those of the site store that
        this one does not shadow, each with its record and whether it is the site's."""
        own = [(ref, record, False) for ref, record in self.list_refs()]
        site = self.site
        if site is None:
            return own
        names = {ref for ref, _record, _site in own}
        return own + [(r, rec, True) for r, rec in site.list_refs() if r not in names]

    def list_blobs(self) -> list[tuple[Digest, int]]:
        """Every stored blob with its size. Entries not named by a sha256 digest, and
        directories (made by hand), are not blobs: ``prune`` leaves them alone."""
        from ucore.values.oci import Digest

        out = []
        for name in self._names(self.blobs):
            if len(name) != 64 or name.strip("0123456789abcdef"):
                continue
            try:
                st = os.stat(self.blobs / name, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                out.append((Digest(name), st.st_size))
        return out

    @staticmethod
    def _names(directory: Path) -> list[str]:
        """What a store directory holds; nothing when it is missing (a store not used yet)."""
        try:
            return os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise store_error(exc, f"listing {directory}") from exc

    def remove_blob(self, digest: Digest) -> None:
        """Remove the user's own copy (never the site store's)."""
        try:
            os.unlink(self.blobs / digest.hex)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise store_error(exc, f"removing blob {digest}") from exc
