"""``ucore pull``, ``login`` and ``logout`` against registries that demand credentials: Basic
(htpasswd) and Bearer tokens, from ``ucore login`` or from Docker's own config file."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.cli import Ucore, assert_error_line, describe, write_docker_config
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


def test_damaged_docker_config_is_skipped_with_a_warning(
    ucore_cli: Ucore, basic_registry: AuthRegistry
) -> None:
    """Docker's file is Docker's: a damaged one is ignored with a warning, and the pull is
    then refused by the registry for want of credentials (exit 5), not an internal error."""
    reg = basic_registry
    docker = ucore_cli.home / ".docker"
    docker.mkdir()
    (docker / "config.json").write_bytes(b'{"auths": {')
    result = ucore_cli.run("pull", f"{reg.address}/busybox:latest", timeout=30)
    assert result.returncode == 5, describe(result)
    assert "ignoring Docker's credentials" in result.stderr


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


# --- hostile and damaged credential files, and how passwords come in --------------------------


def _damaged(path: Path, kind: str) -> None:
    if kind == "directory":
        path.mkdir()
    elif kind == "endless":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes(
            {
                "truncated": b'{"auths": {"other.example": {"auth": "eDp5"}},',
                "deep": b"[" * 100_000 + b"]" * 100_000,
                "huge": b'{"x": "' + b"a" * (2 << 20) + b'"}',
                "nul": b'{"auths": {}}\0',
                "not an object": b'["auths"]',
                "auths not an object": b'{"auths": ["other.example"]}',
            }[kind]
        )


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "deep",
        "huge",
        "nul",
        "not an object",
        "auths not an object",
        "directory",
        "endless",
    ],
)
def test_damaged_auth_file_is_reported_and_kept(
    ucore_cli: Ucore, basic_registry: AuthRegistry, kind: str
) -> None:
    """A damaged ``auth.json`` was read as empty: ``login`` then replaced it (losing every
    other credential in it), ``logout`` said there was nothing to forget, a pull went on
    anonymously without a word; deep nesting or a non-ASCII ``auth`` was an internal error, a
    link to ``/dev/zero`` never ended. Now login and logout name the file (exit 7), a pull
    warns once and goes on without it (as with Docker's file), all leave it as it was, and
    ``logout --all`` is the way out."""
    reg = basic_registry
    ucore_cli.store.mkdir(mode=0o700)
    path = ucore_cli.store / "auth.json"
    _damaged(path, kind)
    before = os.readlink(path) if path.is_symlink() else path.is_dir() or path.read_bytes()
    for args in (
        ("login", "-u", reg.username, "-p", reg.password, reg.address),
        ("logout", reg.address),
        ("pull", f"{reg.address}/busybox:latest"),
    ):
        if args[0] == "pull":  # warned, once, then refused by the registry for want of it
            result = ucore_cli.run(*args, timeout=30)
            assert result.returncode == 5, describe(result)
            warning = [x for x in result.stderr.splitlines() if "auth.json" in x]
            assert len(warning) == 1 and "without it" in warning[0], result.stderr
            assert "Traceback" not in result.stderr
            line = result.stderr
        else:
            line = assert_error_line(ucore_cli.fails(7, *args, timeout=30))
            assert "auth.json" in line, line
        no_secret(line, reg.password)
        after = os.readlink(path) if path.is_symlink() else path.is_dir() or path.read_bytes()
        assert after == before, f"{args[0]} changed the damaged file"
    if kind == "directory":  # removed by hand: ucore deletes no directory tree it did not make
        ucore_cli.fails(7, "logout", "--all")
        assert path.is_dir()
        path.rmdir()
    else:
        ucore_cli.ok("logout", "--all")
        assert not os.path.lexists(path)
    login(ucore_cli, reg)
    auth_file(ucore_cli)


def test_undecodable_entries_are_skipped_and_kept(
    ucore_cli: Ucore, basic_registry: AuthRegistry
) -> None:
    """Entries of the wrong shape (a non-ASCII ``auth`` was an internal error) are not
    credentials, but they are the user's: a login for another host keeps them."""
    reg = basic_registry
    ucore_cli.store.mkdir(mode=0o700)
    odd = {"b.example": "text", "c.example": {"auth": "\0"}, "d.example": {"auth": 7}}
    auths = {reg.address: {"auth": "é"}, **odd}
    (ucore_cli.store / "auth.json").write_text(json.dumps({"auths": auths, "extra": [1]}))
    ucore_cli.fails(5, "pull", f"{reg.address}/busybox:latest")
    login(ucore_cli, reg)
    data = auth_file(ucore_cli)
    assert data["extra"] == [1] and all(data["auths"][k] == v for k, v in odd.items())


def test_loose_auth_file_is_made_private(ucore_cli: Ucore, basic_registry: AuthRegistry) -> None:
    reg = basic_registry
    ucore_cli.store.mkdir(mode=0o700)
    path = write_docker_config(ucore_cli.store, reg.address, reg.username, reg.password)
    path.rename(ucore_cli.store / "auth.json")
    path = ucore_cli.store / "auth.json"
    path.chmod(0o644)
    ucore_cli.ok("pull", f"{reg.address}/busybox:latest")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_planted_symlink_is_neither_followed_nor_written_through(
    ucore_cli: Ucore, basic_registry: AuthRegistry, tmp_path: Path
) -> None:
    """``auth.json`` a symbolic link to someone else's file: ucore neither takes credentials
    from it nor writes ours into it."""
    reg = basic_registry
    ucore_cli.store.mkdir(mode=0o700)
    planted = write_docker_config(tmp_path / "elsewhere", reg.address, reg.username, "planted")
    planted.chmod(0o644)
    before = planted.read_bytes()
    (ucore_cli.store / "auth.json").symlink_to(planted)
    line = assert_error_line(
        ucore_cli.fails(7, "login", "-u", reg.username, "-p", reg.password, reg.address)
    )
    assert "symbolic link" in line
    pulled = ucore_cli.run("pull", f"{reg.address}/busybox:latest")
    assert pulled.returncode == 5 and "symbolic link" in pulled.stderr, describe(pulled)
    ucore_cli.ok("logout", "--all")
    assert planted.read_bytes() == before and not os.path.lexists(ucore_cli.store / "auth.json")


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("{}\r\n", 0),  # docker strips one "\n", then one "\r"
        ("{}", 0),
        ("{}\n\n", 5),  # the password is everything but the last line break, as in docker
        ("{}\nsecond line\n", 5),
        ("\n", 2),
        ("", 2),
    ],
)
def test_password_stdin_is_read_as_docker_reads_it(
    ucore_cli: Ucore, basic_registry: AuthRegistry, given: str, code: int
) -> None:
    reg = basic_registry
    args = ("login", "-u", reg.username, "--password-stdin", reg.address)
    result = ucore_cli.run(*args, input=given.format(reg.password))
    assert result.returncode == code, result.stderr
    if code:
        assert_error_line(result)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("-u", "a:b", "-p", "x"), None, "must not contain ':'"),
        (("-u", "user", "-p", "\udcff"), None, "not valid UTF-8"),
        (("-u", "\udcff", "-p", "x"), None, "not valid UTF-8"),
        (("-u", "user", "--password-stdin"), b"\xff\xfe\n", "not valid UTF-8"),
        (("-u", "user", "--password-stdin"), b"x" * (1 << 20), "longer than"),
    ],
    # short ids: a 1 MiB id in PYTEST_CURRENT_TEST, inherited by ucore, makes exec fail (E2BIG)
    ids=["colon-in-user", "password-utf8", "user-utf8", "stdin-utf8", "stdin-endless"],
)
def test_unusable_credentials_are_refused_before_any_request(
    ucore_cli: Ucore, args: tuple[str, ...], stdin: bytes, message: str
) -> None:
    """A ':' in a user name makes Basic credentials ambiguous; bytes that are not UTF-8 were an
    internal error; an endless stdin (``yes | ucore login``) was read forever."""
    result = subprocess.run(
        ucore_cli.argv("login", *args, "127.0.0.1:1"),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        env=ucore_cli.env,
        timeout=60,
        check=False,
    )
    text = subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )
    assert result.returncode == 2, describe(text)
    assert message in assert_error_line(text)
    assert not (ucore_cli.store / "auth.json").exists()


def test_no_secret_in_verbose_or_json_logs(ucore_cli: Ucore, basic_registry: AuthRegistry) -> None:
    reg = basic_registry
    for password in ("wrong-pass", reg.password):
        result = ucore_cli.run(
            "-vv",
            "--log-format=json",
            "login",
            "-u",
            reg.username,
            "--password-stdin",
            reg.address,
            input=password + "\n",
        )
        assert result.returncode == (5 if password == "wrong-pass" else 0), describe(result)
        no_secret(result.stdout + result.stderr, password, _b64(reg.username, password))
        result = ucore_cli.run("-vv", "--log-format=json", "pull", f"{reg.address}/x:1")
        no_secret(result.stdout + result.stderr, password, _b64(reg.username, password))


def _b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_logout_forgets_every_spelling_that_pull_would_use(
    ucore_cli: Ucore, basic_registry: AuthRegistry
) -> None:
    """An entry written by hand or copied from Docker as ``https://host/v2/`` was used by
    pulls but not found by ``logout host``; an entry named ``""`` made every pull a usage
    error."""
    reg = basic_registry
    ucore_cli.store.mkdir(mode=0o700)
    auth = _b64(reg.username, reg.password)
    entries = {"": {"auth": auth}, f"https://{reg.address}/v2/": {"auth": auth}}
    (ucore_cli.store / "auth.json").write_text(json.dumps({"auths": entries}))
    ucore_cli.ok("pull", f"{reg.address}/busybox:latest")
    assert ucore_cli.ok("logout", reg.address).stdout == f"credentials for {reg.address} removed\n"
    assert list(auth_file(ucore_cli)["auths"]) == [""]
    ucore_cli.fails(5, "pull", f"{reg.address}/multilayer:latest")


def test_login_replaces_every_spelling_of_the_registry(
    ucore_cli: Ucore, basic_registry: AuthRegistry
) -> None:
    """A stale entry spelt ``https://host/v2/`` came before the one ``login`` wrote, so pulls
    kept using the old password after a successful login."""
    reg = basic_registry
    ucore_cli.store.mkdir(mode=0o700)
    stale = {f"https://{reg.address}/v2/": {"auth": _b64(reg.username, "old-password")}}
    (ucore_cli.store / "auth.json").write_text(json.dumps({"auths": stale}))
    ucore_cli.fails(5, "pull", f"{reg.address}/busybox:latest")
    login(ucore_cli, reg)
    assert list(auth_file(ucore_cli)["auths"]) == [reg.address]
    ucore_cli.ok("pull", f"{reg.address}/busybox:latest")
