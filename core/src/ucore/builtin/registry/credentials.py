"""Registry credentials: ucore's own ``auth.json`` (mode 0600), then Docker's ``config.json``.

Both use Docker's format (``{"auths": {"host": {"auth": base64("user:password")}}}``) so a user
can copy one to the other. Credential helpers (``credsStore``) are not run: executing programs
named by a config file is outside what a rootless pull should do.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

from ucore.log import get_logger
from ucore.storage.store import Store
from ucore.values.errors import StoreError, UsageError, store_error
from ucore.values.hub import DOCKER_HUB, DOCKER_HUB_API, DOCKER_HUB_INDEX
from ucore.values.oci import split_registry

log = get_logger(__name__)

#: Docker keeps Docker Hub's credentials under this historical key.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"

#: A credentials file holds a few hundred bytes; one larger than this is not one.
MAX_FILE = 1 << 20


def server_key(host: str) -> str:
    if host in (DOCKER_HUB, DOCKER_HUB_API, DOCKER_HUB_INDEX):
        return DOCKER_HUB_KEY
    return host


def normalize_server(text: str) -> str:
    """``https://host:port/v2/`` or ``host:port`` → ``host:port`` (Docker Hub aliases merged)."""
    return split_registry(text)[1]


class _Unreadable(ValueError):
    """A credentials file that exists but is not one; ``str()`` says why."""


def _load(path: Path, follow: bool) -> dict[str, Any]:
    """The file's JSON object, holding an ``auths`` object (empty when there is no file).
    Bounded, whatever is there: a link to ``/dev/zero``, a FIFO, gigabytes, arrays nested
    past the recursion limit.

    ``follow=False`` is for ucore's own file: a symbolic link planted there is refused rather
    than read (credentials someone else chose) and the file, if it was opened up to others,
    is made private again.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return {"auths": {}}
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise _Unreadable("it is a symbolic link, which ucore does not follow") from None
        raise _Unreadable(exc.strerror or str(exc)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _Unreadable("not a regular file")
    with os.fdopen(fd, "rb") as f:
        if not follow and st.st_uid == os.geteuid() and st.st_mode & 0o077:
            with contextlib.suppress(OSError):  # a store shared read-only: not ours to fix
                os.fchmod(fd, 0o600)
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise _Unreadable(f"larger than {MAX_FILE} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise _Unreadable("not valid JSON") from None
    if not isinstance(doc, dict):
        raise _Unreadable("not a JSON object")
    if not isinstance(doc.setdefault("auths", {}), dict):
        raise _Unreadable("its 'auths' is not a JSON object")
    return doc


def _decode(entry: Any) -> Optional[tuple[str, str]]:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return entry["username"], entry["password"]
    auth = entry.get("auth")
    if not isinstance(auth, str) or not auth:
        return None
    try:
        user, sep, password = base64.b64decode(auth).decode().partition(":")
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 once decoded
        return None
    return (user, password) if sep else None


class Credentials:
    def __init__(self, store: Store, environ: Optional[dict[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self.path = store.root / "auth.json"
        docker_dir = env.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
        self.docker_path = Path(docker_dir) / "config.json"
        self.store = store
        self._warned = False

    def _own(self) -> dict[str, Any]:
        """ucore's file. A damaged one is an error, never read as empty: ``login`` would then
        replace it (losing every other credential in it) and a pull would go on anonymously
        without saying why."""
        try:
            return _load(self.path, follow=False)
        except _Unreadable as exc:
            raise StoreError(
                f"unusable credentials file {self.path}: {exc}"
                " (repair it, or remove it with 'ucore logout --all')"
            ) from None

    def _docker(self) -> dict[str, Any]:
        """Docker's file is Docker's: a damaged one is skipped with a warning, as docker
        itself does, so that it does not stop pulls that need no credentials."""
        try:
            return _load(self.docker_path, follow=True)
        except _Unreadable as exc:
            log.warning("ignoring Docker's credentials", path=str(self.docker_path), why=str(exc))
            return {"auths": {}}

    def check(self) -> None:
        """Fail now if the file ``login`` would update is damaged: before a password is sent
        to a registry, not after."""
        self._own()

    def _own_for_pulls(self) -> dict[str, Any]:
        """ucore's file for a pull: a damaged one is said once, as a warning, and the pull
        goes on without it, as with Docker's file: it stops no pull that needs no
        credentials, and one that does fails on the registry's refusal after this warning."""
        try:
            return self._own()
        except StoreError as exc:
            if not self._warned:
                self._warned = True
                log.warning(f"{exc}; pulling without it")
            return {"auths": {}}

    def lookup(self, host: str) -> Optional[tuple[str, str]]:
        key = server_key(normalize_server(host))
        for read in (self._own_for_pulls, self._docker):
            for name, entry in read()["auths"].items():
                if isinstance(name, str) and _key_of(name) == key:
                    found = _decode(entry)
                    if found:
                        return found
        return None

    def save(self, host: str, user: str, password: str) -> None:
        """Store the credentials under the normalized name, replacing every other spelling
        of it: :meth:`lookup` takes the first match, so a stale ``https://host/v2/`` entry
        left beside the new one would keep being used."""
        data = self._own()
        key = server_key(normalize_server(host))
        for name in _spellings(data["auths"], key):
            del data["auths"][name]
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        data["auths"][key] = {"auth": token}
        self.store.ensure()
        self.store.write_json_atomic(self.path, data)  # a new file, 0600 from the start

    def remove(self, host: str) -> bool:
        """Forget every entry that :meth:`lookup` would use for ``host``, however it is
        spelled (``https://host/v2/``, written by hand or copied from Docker's file)."""
        data = self._own()
        key = server_key(normalize_server(host))
        names = _spellings(data["auths"], key)
        if not names:
            return False
        for name in names:
            del data["auths"][name]
        self.store.ensure()
        self.store.write_json_atomic(self.path, data)
        return True

    def remove_all(self) -> None:
        """Delete the file, whatever it holds (the way out of a damaged one); a symbolic link
        is removed, not what it points to."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise store_error(exc, f"removing {self.path}") from exc


def _key_of(name: str) -> Optional[str]:
    """The normalized key of an entry's name; None for one that names no registry (``""``
    was a usage error on every pull)."""
    try:
        return server_key(normalize_server(name))
    except UsageError:
        return None


def _spellings(auths: dict[str, Any], key: str) -> list[str]:
    """The names in ``auths`` that stand for the registry ``key``."""
    return [name for name in auths if _key_of(name) == key]
