"""The registry transport's parsing of what registries and users name: hosts, challenges."""

from __future__ import annotations

import pytest

from ucore.builtin.registry.transport import is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.2:5000", True),
        ("[::1]:5000", True),
        ("127.0.0.1.nip.io", False),
        ("127.0.0.1.example.com:5000", False),
        ("localhost.example.com", False),
        ("registry.example.com", False),
        ("[::2]", False),
        ("[zz", False),
    ],
)
def test_loopback_is_an_address_not_a_prefix(host: str, loopback: bool) -> None:
    """A loopback registry may be reached over plain HTTP without ``--insecure``; a public
    name that merely starts like a loopback address must not be."""
    assert is_loopback(host) is loopback
