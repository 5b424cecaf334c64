"""Small shared types for registry fixtures (kept out of conftest.py, which tests must not
import: another directory's conftest module could shadow it)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Optional

from support.tokenserver import TokenServer
from ucore.testing.registry import RegistryServer


@dataclass
class AuthRegistry:
    """A registry that demands credentials, and the ones it accepts."""

    server: RegistryServer
    username: str
    password: str
    token_server: Optional[TokenServer] = None

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def url(self) -> str:
        return self.server.url


def second_loopback_host() -> str:
    """Another host name for the "object storage" server, so a redirect crosses hosts.

    Linux routes all of 127.0.0.0/8 to loopback; elsewhere fall back to ``localhost``, which is
    a different host *name* for the client even when it resolves to 127.0.0.1.
    """
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "localhost"
