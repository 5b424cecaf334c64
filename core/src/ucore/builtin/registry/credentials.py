"""Registry credentials: ucore's own ``auth.json`` (mode 0600), then Docker's ``config.json``.

Both use Docker's format (``{"auths": {"host": {"auth": base64("user:password")}}}``) so a user
can copy one to the other. Credential helpers (``credsStore``) are not run: executing programs
named by a config file is outside what a rootless pull should do.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any, Optional

from ucore.config import DOCKER_HUB
from ucore.errors import StoreError
from ucore.oci import DOCKER_HUB_API, split_registry
from ucore.store import Store

#: Docker keeps Docker Hub's credentials under this historical key.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"


def server_key(host: str) -> str:
    if host in (DOCKER_HUB, DOCKER_HUB_API, "index.docker.io"):
        return DOCKER_HUB_KEY
    return host


def normalize_server(text: str) -> str:
    """``https://host:port/v2/`` or ``host:port`` → ``host:port`` (Docker Hub aliases merged)."""
    return split_registry(text)[1]


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class Credentials:
    def __init__(self, store: Store, environ: Optional[dict[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self.path = store.root / "auth.json"
        docker_dir = env.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
        self.docker_path = Path(docker_dir) / "config.json"
        self.store = store

    def lookup(self, host: str) -> Optional[tuple[str, str]]:
        key = server_key(normalize_server(host))
        for path in (self.path, self.docker_path):
            auths = _read(path).get("auths")
            if not isinstance(auths, dict):
                continue
            for name, entry in auths.items():
                if isinstance(name, str) and server_key(normalize_server(name)) == key:
                    found = _decode(entry)
                    if found:
                        return found
        return None

    def save(self, host: str, user: str, password: str) -> None:
        data = _read(self.path)
        auths: dict[str, Any] = data["auths"] if isinstance(data.get("auths"), dict) else {}
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        auths[server_key(normalize_server(host))] = {"auth": token}
        data["auths"] = auths
        self.store.ensure()
        self.store.write_json_atomic(self.path, data)
        try:
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot protect {self.path}: {exc.strerror}") from exc

    def remove(self, host: str) -> bool:
        data = _read(self.path)
        auths = data.get("auths")
        key = server_key(normalize_server(host))
        if not isinstance(auths, dict) or key not in auths:
            return False
        del auths[key]
        self.store.write_json_atomic(self.path, data)
        return True
