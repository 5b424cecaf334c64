"""``ucore pull``, ``login`` and ``logout`` against registries that demand credentials: Basic
(htpasswd) and Bearer tokens, from ``ucore login`` or from Docker's own config file."""

from __future__ import annotations

import json
import stat
from typing import Any

import pytest
from support.cli import Ucore, write_docker_config
from support.registries import AuthRegistry

from ucore.testing.images import TestImages


def auth_file(ucore_cli: Ucore) -> dict[str, Any]:
    path = ucore_cli.store / "auth.json"
    assert path.is_file(), "ucore login wrote no $UCORE_DIR/auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return dict(json.loads(path.read_text()))


def no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, "a secret was printed"


def login(ucore_cli: Ucore, reg: AuthRegistry, password: str = "") -> None:
    result = ucore_cli.ok(
        "login", "--username", reg.username, "--password", password or reg.password, reg.address
    )
    no_secret(result.stdout + result.stderr, reg.password)


# --- Basic ---------------------------------------------------------------------------------


def test_basic_without_credentials_fails(ucore_cli: Ucore, basic_registry: AuthRegistry) -> None:
    ucore_cli.fails(5, "pull", f"{basic_registry.address}/busybox:latest")
    assert not ucore_cli.refs()


def test_basic_login_then_pull(
    ucore_cli: Ucore, basic_registry: AuthRegistry, test_images: TestImages
) -> None:
    login(ucore_cli, basic_registry)
    auths = auth_file(ucore_cli)["auths"]
    assert any(basic_registry.address in key for key in auths)
    result = ucore_cli.ok("pull", "-vv", f"{basic_registry.address}/busybox:latest")
    no_secret(result.stdout + result.stderr, basic_registry.password)
    assert {b.digest for b in test_images.busybox.blobs} <= ucore_cli.blobs()
    ucore_cli.check_store()


def test_basic_login_password_stdin(ucore_cli: Ucore, basic_registry: AuthRegistry) -> None:
    reg = basic_registry
    ucore_cli.ok(
        "login",
        "--username",
        reg.username,
        "--password-stdin",
        reg.address,
        input=reg.password + "\n",
    )
    ucore_cli.ok("pull", f"{reg.address}/multilayer:latest")


def test_basic_login_with_bad_password_fails(
    ucore_cli: Ucore, basic_registry: AuthRegistry
) -> None:
    reg = basic_registry
    result = ucore_cli.fails(
        5, "login", "--username", reg.username, "--password", "wrong-pass", reg.address
    )
    no_secret(result.stderr, "wrong-pass")
    path = ucore_cli.store / "auth.json"
    assert not path.exists() or "wrong-pass" not in path.read_text()


def test_basic_bad_password_in_docker_config(
    ucore_cli: Ucore, basic_registry: AuthRegistry
) -> None:
    reg = basic_registry
    write_docker_config(ucore_cli.home / ".docker", reg.address, reg.username, "wrong-pass")
    ucore_cli.fails(5, "pull", f"{reg.address}/busybox:latest")


def test_basic_from_docker_config(
    ucore_cli: Ucore, basic_registry: AuthRegistry, test_images: TestImages
) -> None:
    reg = basic_registry
    write_docker_config(ucore_cli.home / ".docker", reg.address, reg.username, reg.password)
    ucore_cli.ok("pull", f"{reg.address}/busybox:latest")
    assert {b.digest for b in test_images.busybox.blobs} <= ucore_cli.blobs()


def test_logout_forgets(ucore_cli: Ucore, basic_registry: AuthRegistry) -> None:
    login(ucore_cli, basic_registry)
    ucore_cli.ok("logout", basic_registry.address)
    auths = auth_file(ucore_cli).get("auths", {})
    assert not any(basic_registry.address in key for key in auths)
    ucore_cli.fails(5, "pull", f"{basic_registry.address}/busybox:latest")


# --- Bearer tokens -------------------------------------------------------------------------


def test_token_anonymous_pull(
    ucore_cli: Ucore, token_registry: AuthRegistry, test_images: TestImages
) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    ucore_cli.ok("pull", f"{token_registry.address}/multilayer:latest")
    assert tokens.tokens_issued >= 1
    assert all(r.user is None for r in tokens.requests)
    assert {b.digest for b in test_images.multilayer.blobs} <= ucore_cli.blobs()


def test_token_tokens_are_reused(ucore_cli: Ucore, token_registry: AuthRegistry) -> None:
    """One scope, one pull: a token per blob request would hammer the auth server."""
    tokens = token_registry.token_server
    assert tokens is not None
    ucore_cli.ok("pull", f"{token_registry.address}/multilayer:latest")
    assert tokens.tokens_issued <= 2


def test_token_private_without_credentials_fails_without_looping(
    ucore_cli: Ucore, private_token_registry: AuthRegistry
) -> None:
    tokens = private_token_registry.token_server
    assert tokens is not None
    ucore_cli.fails(5, "pull", f"{private_token_registry.address}/busybox:latest")
    assert 1 <= len(tokens.requests) <= 4, "token requests must not loop on 401"


def test_token_login_then_pull(
    ucore_cli: Ucore, private_token_registry: AuthRegistry, test_images: TestImages
) -> None:
    reg = private_token_registry
    assert reg.token_server is not None
    login(ucore_cli, reg)
    assert any(reg.address in key for key in auth_file(ucore_cli)["auths"])
    reg.token_server.clear()
    result = ucore_cli.ok("pull", "-vv", "--log-format=json", f"{reg.address}/busybox:latest")
    assert any(r.user == reg.username and r.token for r in reg.token_server.requests)
    no_secret(result.stdout + result.stderr, reg.password, *reg.token_server.issued_tokens())
    assert {b.digest for b in test_images.busybox.blobs} <= ucore_cli.blobs()


def test_token_login_with_bad_password_fails(
    ucore_cli: Ucore, private_token_registry: AuthRegistry
) -> None:
    reg = private_token_registry
    ucore_cli.fails(5, "login", "--username", reg.username, "--password", "nope", reg.address)


@pytest.mark.parametrize("where", ["home", "DOCKER_CONFIG"])
def test_token_from_docker_config(
    ucore_cli: Ucore, private_token_registry: AuthRegistry, test_images: TestImages, where: str
) -> None:
    reg = private_token_registry
    assert reg.token_server is not None
    if where == "home":
        write_docker_config(ucore_cli.home / ".docker", reg.address, reg.username, reg.password)
        env = {}
    else:
        directory = ucore_cli.home / "elsewhere"
        write_docker_config(directory, reg.address, reg.username, reg.password)
        env = {"DOCKER_CONFIG": str(directory)}
    ucore_cli.ok("pull", f"{reg.address}/busybox:latest", env=env)
    assert any(r.user == reg.username and r.token for r in reg.token_server.requests)
    assert {b.digest for b in test_images.busybox.blobs} <= ucore_cli.blobs()
