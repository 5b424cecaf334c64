"""``ucore pull`` when the network, the registry or the content misbehaves, and when ucore
itself is killed or raced: the store must never show anything unverified."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
from support.cli import (
    Ucore,
    assert_error_line,
    describe,
    json_events,
    kill,
    write_docker_config,
)
from support.faultproxy import BLOB_PATH, MANIFEST_PATH, FaultProxy, Recorded, raw_response
from support.registries import AuthRegistry

from ucore.testing import images as im
from ucore.testing.images import TestImages


def only(blob: im.Blob) -> str:
    """A fault ``match`` for one blob's URL."""
    return re.escape(f"/blobs/{blob.digest}")


def blob_gets(proxy: FaultProxy, blob: im.Blob) -> list[Recorded]:
    return [r for r in proxy.requests("GET") if r.digest == blob.digest and "/blobs/" in r.path]


# --- interrupted and failing transfers -----------------------------------------------------


def test_truncated_blob_resumes_with_range(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    layer = test_images.busybox.layers[0].blob
    cut = 300_000
    proxy.truncate(after=cut, match=only(layer))
    ucore_cli.ok("pull", f"{proxy.address}/busybox:latest")
    ucore_cli.check_store()
    assert layer.digest in ucore_cli.blobs()
    gets = blob_gets(proxy, layer)
    ranged = [r for r in gets if "range" in r.headers]
    assert ranged, f"no Range request after the truncated body: {[r.headers for r in gets]}"
    match = re.match(r"bytes=(\d+)-", ranged[0].headers["range"])
    assert match is not None, ranged[0].headers["range"]
    start = int(match.group(1))
    assert 0 < start <= cut and ranged[0].status == 206
    assert len([r for r in gets if "range" not in r.headers]) == 1, "restarted from zero"
    ucore_cli.ok("verify", f"{proxy.address}/busybox:latest")


@pytest.mark.parametrize("which", ["layer", "config"])
def test_corrupt_blob_is_refused(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages, which: str
) -> None:
    image = test_images.busybox
    blob = image.layers[0].blob if which == "layer" else image.config
    proxy.corrupt(times=None, match=only(blob))
    ucore_cli.fails(6, "pull", f"{proxy.address}/busybox:latest")
    assert blob.digest not in ucore_cli.blobs()
    ucore_cli.check_store()
    assert not ucore_cli.refs(), "a tag points at an image with an unverified blob"


def test_429_honours_retry_after(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    layer = test_images.busybox.layers[0].blob
    proxy.fail(429, times=2, retry_after="1", match=only(layer), methods=("GET",))
    result = ucore_cli.ok("--log-format=json", "pull", f"{proxy.address}/busybox:latest")
    gets = blob_gets(proxy, layer)
    assert [r.status for r in gets][:3] == [429, 429, 200]
    for earlier, later in zip(gets, gets[1:3]):
        assert earlier.finished is not None
        assert later.started - earlier.finished >= 0.9, "Retry-After: 1 not honoured"
    assert any(e.get("event") == "http.retry" for e in json_events(result.stderr))
    ucore_cli.check_store()


@pytest.mark.parametrize(
    "retry_after", ["\u00b2", "Mon, 01 Jan 9999999999 00:00:00 GMT"], ids=["superscript", "year"]
)
def test_unparsable_retry_after_is_ignored(
    ucore_cli: Ucore, proxy: FaultProxy, retry_after: str
) -> None:
    """A digit Python's ``str.isdigit`` accepts but ``float`` does not, and a date beyond what
    a timestamp holds: both are as meaningless as any garbage, so the usual backoff applies."""
    headers = [("Retry-After", retry_after), ("Content-Length", "0")]
    fault = proxy.raw(raw_response(429, headers), match=MANIFEST_PATH, times=1)
    ucore_cli.ok("pull", f"{proxy.address}/busybox:latest")
    assert fault.fired == 1
    ucore_cli.check_store()


def test_503_then_success(ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages) -> None:
    proxy.fail(503, times=2, match=MANIFEST_PATH)
    ucore_cli.ok("pull", f"{proxy.address}/multilayer:latest")
    statuses = [r.status for r in proxy.requests(match=MANIFEST_PATH)]
    assert statuses[:2] == [503, 503] and 200 in statuses
    assert {b.digest for b in test_images.multilayer.blobs} <= ucore_cli.blobs()


def test_connection_reset_then_success(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    layer = test_images.busybox.layers[0].blob
    fault = proxy.reset(times=2, match=only(layer))
    ucore_cli.ok("pull", f"{proxy.address}/busybox:latest")
    assert fault.fired == 2
    assert layer.digest in ucore_cli.blobs()
    ucore_cli.check_store()


def test_persistent_503_gives_up(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    proxy.fail(503, times=None, match=MANIFEST_PATH)
    start = time.monotonic()
    ucore_cli.fails(4, "pull", f"{proxy.address}/busybox:latest")
    assert time.monotonic() - start < 60
    assert 1 < len(proxy.requests(match=MANIFEST_PATH)) <= 10, "retries must be bounded"


def test_content_encoding_does_not_change_the_hashed_bytes(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    """Object stores often label a .tar.gz ``Content-Encoding: gzip``; an HTTP client that
    decodes it hashes the tar instead of the blob."""
    layer = test_images.busybox.layers[0].blob
    proxy.inject_headers({"Content-Encoding": "gzip"}, match=only(layer))
    ucore_cli.ok("pull", f"{proxy.address}/busybox:latest")
    assert layer.digest in ucore_cli.blobs()
    ucore_cli.check_store()


@pytest.mark.parametrize("mode", ["ignore", "shift"])
def test_resume_when_server_mishandles_range(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages, mode: str
) -> None:
    """After a truncated body the server answers the resume with the whole blob (200), or with
    a 206 that starts elsewhere: the client must notice and still end with the right bytes."""
    layer = test_images.busybox.layers[0].blob
    proxy.truncate(after=300_000, match=only(layer))
    mangled = proxy.mangle_range(mode, by=1000, match=only(layer))
    ucore_cli.ok("pull", f"{proxy.address}/busybox:latest")
    assert mangled.fired == 1, "the client never resumed with Range"
    ucore_cli.check_store()
    ucore_cli.ok("verify", f"{proxy.address}/busybox:latest")


def _challenge(realm: str) -> list[tuple[str, str]]:
    return [("WWW-Authenticate", f'Bearer realm="{realm}",service="x"'), ("Content-Length", "0")]


@pytest.mark.parametrize(
    ("match", "response", "status"),
    [
        (
            MANIFEST_PATH,
            raw_response(200, [("Content-Length", "2"), ("Content-Length", "5")], b"{}abc"),
            4,
        ),
        (BLOB_PATH, raw_response(200, [("Content-Length", "2"), ("Content-Length", "5")]), 4),
        (
            MANIFEST_PATH,
            raw_response(307, [("Location", "http://[zz/x"), ("Content-Length", "0")]),
            4,
        ),
        (
            MANIFEST_PATH,
            raw_response(307, [("Location", "http://127.0.0.1:99999/"), ("Content-Length", "0")]),
            4,
        ),
        (MANIFEST_PATH, raw_response(401, _challenge("http://[zz/token")), 5),
        (MANIFEST_PATH, raw_response(401, _challenge("http://127.0.0.1:99999/token")), 5),
    ],
    ids=[
        "manifest-two-lengths",
        "blob-two-lengths",
        "redirect-bad-ipv6",
        "redirect-bad-port",
        "realm-bad-ipv6",
        "realm-bad-port",
    ],
)
def test_malformed_response_is_one_line(
    ucore_cli: Ucore, proxy: FaultProxy, match: str, response: bytes, status: int
) -> None:
    """Responses no well-behaved server sends, which requests and urllib raise for outside the
    errors a transfer is expected to meet."""
    proxy.raw(response, match=match)
    ucore_cli.fails(status, "pull", f"{proxy.address}/busybox:latest")
    assert not ucore_cli.refs()
    ucore_cli.check_store()


def _dripped(length: int) -> bytes:
    return raw_response(200, [("Content-Length", str(length))], b"\0" * length)


@pytest.mark.parametrize("what", ["manifest", "blob", "token"])
def test_body_dripped_to_beat_the_read_timeout_is_abandoned(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages, what: str
) -> None:
    """Ten bytes every tenth of a second never trip a one-second read timeout: without a
    minimum speed the blob would take three hours, the manifest and token a quarter of one."""
    layer = test_images.busybox.layers[0].blob
    if what == "token":
        proxy.raw(raw_response(401, _challenge(f"{proxy.url}/token")), match=MANIFEST_PATH)
    match = {"manifest": MANIFEST_PATH, "blob": only(layer), "token": "^/token"}[what]
    size = layer.size if what == "blob" else 100_000
    proxy.raw(_dripped(size), match=match, piece=10, interval=0.1)
    start = time.monotonic()
    ref = f"{proxy.address}/busybox:latest"
    result = ucore_cli.fails(4, "pull", ref, env={"UCORE_TIMEOUT": "1"}, timeout=60)
    assert "too slow" in result.stderr
    assert time.monotonic() - start < 30
    assert layer.digest not in ucore_cli.blobs()
    assert not ucore_cli.refs()
    ucore_cli.check_store()


def test_token_response_without_length_is_capped(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    proxy.raw(raw_response(401, _challenge(f"{proxy.url}/token")), match=MANIFEST_PATH)
    huge = b'{"token": "' + b"a" * (64 << 20) + b'"}'
    proxy.raw(raw_response(200, [], huge), match="^/token")
    ucore_cli.fails(6, "pull", f"{proxy.address}/busybox:latest")
    (answer,) = proxy.requests("GET", "^/token")
    assert answer.bytes_sent < len(huge), "the whole 64 MiB token response was read"


@pytest.mark.parametrize(
    "body",
    [b'{"token": "ab\\r\\nX-Injected: secret-token"}', b'{"token": "\\u20ac"}', b'{"a":' * 100_000],
    ids=["line-break", "not-ascii", "nested-past-recursion-limit"],
)
def test_unusable_token_is_refused(ucore_cli: Ucore, proxy: FaultProxy, body: bytes) -> None:
    proxy.raw(raw_response(401, _challenge(f"{proxy.url}/token")), match=MANIFEST_PATH)
    proxy.raw(raw_response(200, [("Content-Length", str(len(body)))], body), match="^/token")
    result = ucore_cli.fails(4, "pull", f"{proxy.address}/busybox:latest")
    assert "no usable token" in result.stderr
    assert "secret-token" not in result.stderr
    assert not [r for r in proxy.requests() if "x-injected" in r.headers]


def test_token_server_failing_for_a_while_is_retried(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    """Token servers rate-limit and fail like registries: a 503 and a 429 from the token
    server are retried with the registry's policy, and the retry events name its URL."""
    proxy.raw(raw_response(401, _challenge(f"{proxy.url}/token")), match=MANIFEST_PATH, times=1)
    proxy.fail(503, times=1, match="^/token")
    proxy.fail(429, times=1, match="^/token", retry_after="1")
    proxy.serve("/token", body=b'{"token": "abc"}')
    result = ucore_cli.ok("--log-format=json", "pull", f"{proxy.address}/busybox:latest")
    assert [r.status for r in proxy.requests("GET", "^/token")] == [503, 429, 200]
    retried = [e["url"] for e in json_events(result.stderr) if e.get("event") == "http.retry"]
    assert len(retried) == 2
    assert all(url.startswith(f"{proxy.url}/token?") for url in retried)
    assert test_images.busybox.layers[0].blob.digest in ucore_cli.blobs()


def test_token_server_failing_for_good_ends_in_one_line(
    ucore_cli: Ucore, proxy: FaultProxy
) -> None:
    proxy.raw(raw_response(401, _challenge(f"{proxy.url}/token")), match=MANIFEST_PATH)
    proxy.fail(503, times=None, match="^/token")
    result = ucore_cli.fails(
        4, "pull", f"{proxy.address}/busybox:latest", env={"UCORE_RETRIES": "3"}
    )
    assert f"token server {proxy.address} kept answering 503 after 3 attempts" in result.stderr
    assert len(proxy.requests("GET", "^/token")) == 3
    assert not ucore_cli.refs()


# --- tokens expiring and refused mid-pull --------------------------------------------------


def test_token_expiring_mid_pull_is_refreshed(
    ucore_cli: Ucore, token_registry: AuthRegistry, token_proxy: FaultProxy, test_images: TestImages
) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    layer = test_images.busybox.layers[0].blob
    challenge = tokens.challenge("repository:busybox:pull", error="invalid_token")
    token_proxy.fail(401, times=1, match=only(layer), headers={"WWW-Authenticate": challenge})
    ucore_cli.ok("pull", f"{token_proxy.address}/busybox:latest")
    assert 2 <= tokens.tokens_issued <= 4
    assert layer.digest in ucore_cli.blobs()


def test_401_after_fresh_token_does_not_loop(
    ucore_cli: Ucore, token_registry: AuthRegistry, token_proxy: FaultProxy, test_images: TestImages
) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    layer = test_images.busybox.layers[0].blob
    challenge = tokens.challenge("repository:busybox:pull", error="invalid_token")
    token_proxy.fail(401, times=None, match=only(layer), headers={"WWW-Authenticate": challenge})
    ucore_cli.fails(5, "pull", f"{token_proxy.address}/busybox:latest")
    assert tokens.tokens_issued <= 4
    assert len(blob_gets(token_proxy, layer)) <= 4
    assert layer.digest not in ucore_cli.blobs()


# --- redirects -----------------------------------------------------------------------------


def test_redirect_to_other_host_drops_basic_credentials(
    ucore_cli: Ucore,
    basic_registry: AuthRegistry,
    basic_proxy: FaultProxy,
    blob_host: FaultProxy,
    test_images: TestImages,
) -> None:
    write_docker_config(
        ucore_cli.home / ".docker",
        basic_proxy.address,
        basic_registry.username,
        basic_registry.password,
    )
    basic_proxy.redirect(blob_host.url)
    ucore_cli.ok("pull", f"{basic_proxy.address}/busybox:latest")
    assert any("authorization" in r.headers for r in basic_proxy.requests())
    fetched = {r.digest for r in blob_host.requests("GET")}
    assert {b.digest for b in test_images.busybox.blobs} <= fetched
    leaked = [r.path for r in blob_host.requests() if "authorization" in r.headers]
    assert not leaked, f"Authorization sent to another host: {leaked}"
    ucore_cli.check_store()


def test_redirect_does_not_send_netrc_passwords(
    ucore_cli: Ucore, proxy: FaultProxy, blob_host: FaultProxy, test_images: TestImages
) -> None:
    """requests reads ``~/.netrc`` for any host without an ``Authorization`` header: a
    registry could make ucore send the user's password for any host it names."""
    netrc = ucore_cli.home / ".netrc"
    netrc.write_text(f"machine {blob_host.host} login alice password netrc-secret\n")
    netrc.chmod(0o600)
    proxy.redirect(blob_host.url)
    ucore_cli.ok("pull", f"{proxy.address}/busybox:latest")
    assert {b.digest for b in test_images.busybox.blobs} <= {
        r.digest for r in blob_host.requests("GET")
    }
    leaked = [r.path for r in blob_host.requests() if "authorization" in r.headers]
    assert not leaked, f"~/.netrc credentials sent to {blob_host.host}: {leaked}"


def test_redirect_to_other_host_drops_bearer_token(
    ucore_cli: Ucore,
    private_token_registry: AuthRegistry,
    token_proxy: FaultProxy,
    blob_host: FaultProxy,
    test_images: TestImages,
) -> None:
    reg = private_token_registry
    ucore_cli.ok(
        "login",
        "--username",
        reg.username,
        "--password-stdin",
        token_proxy.address,
        input=reg.password + "\n",
    )
    token_proxy.redirect(blob_host.url)
    ucore_cli.ok("pull", f"{token_proxy.address}/multilayer:latest")
    assert any(
        r.headers.get("authorization", "").startswith("Bearer ") for r in token_proxy.requests()
    )
    assert {b.digest for b in test_images.multilayer.blobs} <= {
        r.digest for r in blob_host.requests("GET")
    }
    leaked = [r.path for r in blob_host.requests() if "authorization" in r.headers]
    assert not leaked, f"Authorization sent to another host: {leaked}"


# --- hostile manifests ---------------------------------------------------------------------


def serve_manifest(proxy: FaultProxy, repo: str, ref: str, body: bytes, media_type: str) -> str:
    proxy.serve(
        f"/v2/{repo}/manifests/{ref}",
        body=body,
        headers={"Content-Type": media_type, "Docker-Content-Digest": im.sha256_digest(body)},
    )
    return (
        f"{proxy.address}/{repo}:{ref}"
        if not ref.startswith("sha256:")
        else f"{proxy.address}/{repo}@{ref}"
    )


def test_schema1_is_refused(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    ref = serve_manifest(
        proxy, "busybox", "schema1", im.schema1_manifest(), im.DOCKER_SCHEMA1_SIGNED
    )
    line = ucore_cli.fails(4, "pull", ref).stderr
    assert "schema" in line.lower()
    assert not proxy.blob_downloads()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"schemaVersion": 2, "mediaType": "%s", "config": 42, "layers": []}'
        % im.OCI_MANIFEST.encode(),
        b"[]",
        b"[" * 100_000,
    ],
    ids=["not-json", "config-not-a-descriptor", "json-array", "nested-past-recursion-limit"],
)
def test_malformed_manifest(ucore_cli: Ucore, proxy: FaultProxy, body: bytes) -> None:
    ref = serve_manifest(proxy, "busybox", "malformed", body, im.OCI_MANIFEST)
    ucore_cli.fails(6, "pull", ref)
    assert not ucore_cli.blobs() and not ucore_cli.refs()


def test_manifest_not_matching_requested_digest(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    wanted = test_images.busybox.digest
    ref = serve_manifest(
        proxy, "busybox", wanted, test_images.multilayer.manifest.data, im.OCI_MANIFEST
    )
    ucore_cli.fails(6, "pull", ref)
    assert not proxy.blob_downloads(), "blobs fetched for an unverified manifest"
    assert not ucore_cli.blobs() and not ucore_cli.refs()


def test_config_platform_the_store_cannot_record_is_left_out(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    """An ``architecture`` of ``AMD 64`` was recorded as the platform ``linux/AMD 64``, which
    no later load parses: the image became unusable, and so did ``rmi`` of any other image."""
    image = test_images.busybox
    config = json.loads(image.config.data)
    config["architecture"] = "AMD 64"
    config_bytes = im.canonical_json(config)
    manifest = json.loads(image.manifest.data)
    manifest["config"].update(digest=im.sha256_digest(config_bytes), size=len(config_bytes))
    proxy.serve(f"/v2/busybox/blobs/{im.sha256_digest(config_bytes)}", body=config_bytes)
    odd = serve_manifest(proxy, "busybox", "odd", im.canonical_json(manifest), im.OCI_MANIFEST)
    ucore_cli.ok("pull", odd)
    ucore_cli.ok("pull", f"{proxy.address}/busybox:latest")
    ucore_cli.ok("inspect", odd)
    ucore_cli.ok("rmi", f"{proxy.address}/busybox:latest")
    ucore_cli.ok("rmi", odd)
    assert not ucore_cli.refs()


def test_layer_size_lie(ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages) -> None:
    manifest = json.loads(test_images.busybox.manifest.data)
    manifest["layers"][0]["size"] -= 1
    ref = serve_manifest(proxy, "busybox", "sizelie", im.canonical_json(manifest), im.OCI_MANIFEST)
    ucore_cli.fails(6, "pull", ref)
    assert test_images.busybox.layers[0].blob.digest not in ucore_cli.blobs()
    ucore_cli.check_store()


def test_oversized_manifest(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    body = b'{"schemaVersion":2,"mediaType":"%s","pad":"' % im.OCI_MANIFEST.encode()
    body += b"x" * (16 << 20) + b'"}'
    ref = serve_manifest(proxy, "busybox", "huge", body, im.OCI_MANIFEST)
    result = ucore_cli.run("pull", ref)
    assert result.returncode in (4, 6), describe(result)
    assert_error_line(result)


# --- a full disk ---------------------------------------------------------------------------


def test_disk_full_is_one_line_and_leaves_the_store_consistent(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages, tmp_path: Path
) -> None:
    """Pulls into tmpfs mounts sized around the layer fill the disk while the layer is written,
    when its last buffered bytes are flushed for publication, or when the tag is recorded."""
    layer = test_images.busybox.layers[0].blob
    ref = f"{proxy.address}/busybox:latest"
    statuses = set()
    for kib in range(layer.size // 1024 - 8, layer.size // 1024 + 32, 4):
        mount = tmp_path / f"mnt{kib}"
        mount.mkdir()
        shutil.rmtree(ucore_cli.store, ignore_errors=True)
        result = ucore_cli.on_full_disk(kib, mount, "pull", ref)
        assert result.returncode in (0, 7), f"tmpfs of {kib} KiB\n{describe(result)}"
        if result.returncode:
            assert "disk full" in assert_error_line(result)
        ucore_cli.check_store()
        assert not list((ucore_cli.store / "tmp").iterdir()), f"tmpfs of {kib} KiB"
        statuses.add(result.returncode)
    assert statuses == {0, 7}


# --- killed and concurrent pulls -----------------------------------------------------------


def test_kill_9_mid_download_then_clean_repull(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    ref = f"{proxy.address}/busybox:latest"
    layer = test_images.busybox.layers[0].blob
    proxy.stall(after=layer.size // 2, match=only(layer))
    proc = ucore_cli.popen("pull", ref)
    try:
        assert proxy.stalled.wait(60), "the download never reached the stall point"
        time.sleep(0.3)  # let the client write what it has received
    finally:
        kill(proc, signal.SIGKILL)
    proxy.release()
    assert proc.returncode == -signal.SIGKILL
    ucore_cli.check_store()
    assert layer.digest not in ucore_cli.blobs(), "a half-downloaded blob was published"
    tmp = ucore_cli.store / "tmp"
    partial = {p for p in tmp.rglob("*") if p.is_file()} if tmp.exists() else set()

    proxy.reset_state()
    ucore_cli.ok("pull", ref)
    ucore_cli.check_store()
    ucore_cli.ok("verify", ref)
    assert layer.digest in ucore_cli.blobs()
    left = {p for p in partial if p.exists()}
    assert not left, f"the killed pull's partial files were neither resumed nor removed: {left}"


def test_concurrent_pulls_share_one_store(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    """Batch jobs start together on a shared home: 16 pulls of one image into one store."""
    ref = f"{proxy.address}/busybox:latest"
    proxy.throttle(bytes_per_second=4 << 20)  # the pulls overlap instead of finishing in turn
    procs = [ucore_cli.popen("pull", ref) for _ in range(16)]
    results = [(p, *p.communicate(timeout=180)) for p in procs]
    failures = [
        f"exit {p.returncode}: {err[-800:]}" for p, _out, err in results if p.returncode != 0
    ]
    assert not failures, "\n".join(failures)
    ucore_cli.check_store()
    ucore_cli.ok("verify", ref)
    counts = proxy.download_counts()
    for blob in test_images.busybox.blobs:
        assert 1 <= counts.get(blob.digest, 0) <= 2, (
            f"{blob.digest} downloaded {counts.get(blob.digest)} times"
        )


def test_sigterm_mid_download_exits_143_and_the_next_pull_resumes(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    """A batch system's time limit (SIGTERM): one line, status 143, the partial blob kept
    out of sight, and the next pull continues it with ``Range`` instead of starting over."""
    ref = f"{proxy.address}/busybox:latest"
    layer = test_images.busybox.layers[0].blob
    proxy.stall(after=layer.size // 2, match=only(layer))
    proc = ucore_cli.popen("pull", ref)
    assert proxy.stalled.wait(60), "the download never reached the stall point"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proxy.release()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.splitlines() == ["ucore: terminated"]
    ucore_cli.check_store()
    assert layer.digest not in ucore_cli.blobs()
    proxy.reset_state()
    ucore_cli.ok("pull", ref)
    resumed = [r for r in blob_gets(proxy, layer) if "range" in r.headers]
    assert resumed and resumed[0].status == 206, [r.headers for r in blob_gets(proxy, layer)]
    ucore_cli.ok("verify", ref)


# --- a registry that stops answering -------------------------------------------------------

#: A one-second read timeout and a three-second stall budget, with attempts to spare: without
#: the budget, 50 silent attempts would take 50 seconds and the bound below would fail.
STALL_ENV = {"UCORE_TIMEOUT": "1", "UCORE_STALL_TIMEOUT": "3", "UCORE_RETRIES": "50"}
#: Far above the three seconds the budget allows, far below the 50 the retries would take.
GIVE_UP_BOUND = 30


def test_registry_that_stalls_mid_blob_gives_up_and_the_next_pull_resumes(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    """Half the layer, then silence; every resume gets its headers and then nothing. The pull
    gives up on its own, in one line with status 4, keeping the half it has; the next pull,
    the registry answering again, continues it with ``Range`` instead of starting over."""
    ref = f"{proxy.address}/busybox:latest"
    layer = test_images.busybox.layers[0].blob
    proxy.stall(after=layer.size // 2, times=1, match=only(layer))
    proxy.stall(after=0, times=None, match=only(layer))
    start = time.monotonic()
    result = ucore_cli.fails(4, "pull", ref, env=STALL_ENV, timeout=GIVE_UP_BOUND * 2)
    assert time.monotonic() - start < GIVE_UP_BOUND
    line = assert_error_line(result)
    assert f"{proxy.address} stopped answering" in line and "stall_timeout" in line, line
    assert len(blob_gets(proxy, layer)) >= 2, "the stalled download was never resumed"
    assert layer.digest not in ucore_cli.blobs()
    assert not ucore_cli.refs()
    ucore_cli.check_store()

    proxy.reset_state()
    ucore_cli.ok("pull", ref)
    gets = blob_gets(proxy, layer)
    assert gets and all("range" in r.headers for r in gets), [r.headers for r in gets]
    match = re.match(r"bytes=(\d+)-", gets[0].headers["range"])
    assert match is not None and 0 < int(match.group(1)) <= layer.size // 2, gets[0].headers
    assert gets[0].status == 206
    ucore_cli.check_store()
    ucore_cli.ok("verify", ref)


def test_registry_that_accepts_and_never_answers_gives_up(ucore_cli: Ucore) -> None:
    """A registry whose kernel accepts connections while the server sends nothing at all,
    not even a status line: the manifest request gives up within the stall budget too."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        result = ucore_cli.fails(
            4, "pull", f"{address}/busybox:latest", env=STALL_ENV, timeout=GIVE_UP_BOUND * 2
        )
        assert time.monotonic() - start < GIVE_UP_BOUND
    assert f"{address} stopped answering" in result.stderr, result.stderr
    assert not ucore_cli.refs()
