"""A real OCI registry (Debian's ``docker-registry``, the CNCF distribution server) for tests.

Several servers may share one storage directory: tests push once to an open instance and pull
the same content through instances that demand Basic or Bearer authentication.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import requests

REGISTRY_BINARY = "docker-registry"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _yaml(mapping: dict[str, Any], indent: int) -> list[str]:
    """Nested dicts of scalars as YAML; scalars as JSON (a YAML subset), so paths and URLs with
    colons or spaces survive."""
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines.append(f"{' ' * indent}{key}:")
            lines.extend(_yaml(value, indent + 2))
        else:
            lines.append(f"{' ' * indent}{key}: {json.dumps(value)}")
    return lines


class RegistryServer:
    """Starts ``docker-registry serve`` on 127.0.0.1 with a random port; ``url`` is its base.

    :param auth: the registry's ``auth`` configuration section (htpasswd or token), or None.
    :param extra: further top-level configuration sections (e.g. ``{"compatibility": {"schema1":
        {"enabled": True}}}``), nested dicts of scalars.
    """

    def __init__(
        self,
        workdir: Path,
        storage: Optional[Path] = None,
        auth: Optional[dict[str, Any]] = None,
        host: str = "127.0.0.1",
        extra: Optional[dict[str, Any]] = None,
    ) -> None:
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise RuntimeError(
                "docker-registry not found: install the Debian package 'docker-registry'"
                " (tests/setup-host.sh does)"
            )
        self.binary = binary
        self.workdir = workdir
        self.storage = storage or workdir / "storage"
        self.host = host
        self.port = free_port(host)
        self.auth = auth
        self.extra = extra or {}
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def address(self) -> str:
        """``host:port``, the registry part of an image reference."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.address}",
            "  secret: ucore-tests",
        ]
        sections: dict[str, Any] = dict(self.extra)
        if self.auth:
            sections["auth"] = self.auth
        lines.extend(_yaml(sections, 0))
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> RegistryServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir / f"config-{self.port}.yml"
        config.write_text(self._config())
        log = open(self.workdir / f"registry-{self.port}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
        self.proc = subprocess.Popen(
            [self.binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.logtext()}")
            try:
                with requests.Session() as session:
                    session.trust_env = False  # never through an HTTP proxy from the environment
                    session.get(f"{self.url}/v2/", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not start within {timeout}s: {self.logtext()}")

    def logtext(self) -> str:
        path = self.workdir / f"registry-{self.port}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
