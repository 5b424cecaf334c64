"""``ucore pull`` against a real registry (through the fault proxy, with no faults set, so the
request log shows exactly what the client fetched)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from support.cli import Ucore, json_events
from support.faultproxy import FaultProxy

from ucore.testing import images as im
from ucore.testing.images import TestImages
from ucore.testing.registry import RegistryServer, free_port

HOST_OS, HOST_ARCH, HOST_VARIANT = im.host_platform()


def layer_digests(image: im.Image) -> set[str]:
    return {layer.blob.digest for layer in image.layers}


def pull_ok(ucore_cli: Ucore, *args: str) -> None:
    ucore_cli.ok("pull", *args)
    ucore_cli.check_store()


def test_pull_busybox(ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages) -> None:
    ref = f"{proxy.address}/busybox:latest"
    pull_ok(ucore_cli, ref)
    image = test_images.busybox
    assert {b.digest for b in image.blobs} <= ucore_cli.blobs()
    assert ucore_cli.refs(), "no tag recorded under refs/"
    assert proxy.download_counts() == {b.digest: 1 for b in image.blobs}
    assert not any(r.method not in ("GET", "HEAD") for r in proxy.requests())
    ucore_cli.ok("verify", ref)
    assert stat.S_IMODE(ucore_cli.store.stat().st_mode) == 0o700


def test_inspect_and_images_after_pull(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    ref = f"{proxy.address}/busybox:latest"
    pull_ok(ucore_cli, ref)
    out = json.loads(ucore_cli.ok("inspect", "--json", ref).stdout)
    assert {"config", "manifest"} <= set(out)
    assert json.dumps(out["config"]).count('"sh"') >= 1  # Cmd ["sh"] is in there somewhere
    listing = ucore_cli.ok("images", "--json").stdout
    json.loads(listing)
    assert "busybox" in listing
    assert "busybox" in ucore_cli.ok("images").stdout


def test_pull_multilayer_mixed_compression(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    ref = f"{proxy.address}/multilayer:latest"
    pull_ok(ucore_cli, ref)
    image = test_images.multilayer
    assert {b.digest for b in image.blobs} <= ucore_cli.blobs()
    assert [layer.compression for layer in image.layers] == ["gzip", "zstd", "none"]
    ucore_cli.ok("verify", ref)


def test_pull_nested_repository_and_second_tag(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    pull_ok(ucore_cli, f"{proxy.address}/nested/path/busybox:latest")
    pull_ok(ucore_cli, f"{proxy.address}/busybox:1.35")
    assert {b.digest for b in test_images.busybox.blobs} <= ucore_cli.blobs()
    assert proxy.download_counts() == {b.digest: 1 for b in test_images.busybox.blobs}
    assert len(ucore_cli.refs()) >= 2


def test_pull_by_digest(ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages) -> None:
    image = test_images.multilayer
    pull_ok(ucore_cli, f"{proxy.address}/multilayer@{image.digest}")
    assert {b.digest for b in image.blobs} <= ucore_cli.blobs()
    assert proxy.requests("GET", f"/v2/multilayer/manifests/{image.digest}")


def test_pull_with_registry_option(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    """``--registry`` for a name without a registry part; the test registry has the image both
    as ``busybox`` and as ``library/busybox``, so either Docker-Hub-style mapping works."""
    pull_ok(ucore_cli, f"--registry={proxy.url}", "busybox:latest")
    assert {b.digest for b in test_images.busybox.blobs} <= ucore_cli.blobs()
    assert all(r.path.startswith("/v2/") for r in proxy.requests())


def _pulled_platform(proxy: FaultProxy, index: im.Index) -> list[im.Image]:
    fetched = {r.digest for r in proxy.requests("GET", "/manifests/sha256:")}
    return [image for image in index.images if image.digest in fetched]


def test_pull_multiplatform_default_is_host(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    index = test_images.multiplatform
    pull_ok(ucore_cli, f"{proxy.address}/multiplatform:latest")
    host = index.for_platform(HOST_OS, HOST_ARCH)
    assert _pulled_platform(proxy, index) == [host]
    assert {b.digest for b in host.blobs} <= ucore_cli.blobs()
    attestation = index.images[0]
    assert attestation.os == "unknown"
    assert not {b.digest for b in attestation.blobs} & ucore_cli.blobs()
    ucore_cli.ok("verify", f"{proxy.address}/multiplatform:latest")


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("linux/arm64", ("linux", "arm64", "v8")),
        ("linux/arm64/v8", ("linux", "arm64", "v8")),
        ("linux/arm/v7", ("linux", "arm", "v7")),
        ("linux/amd64", ("linux", "amd64", None)),
    ],
)
def test_pull_multiplatform_explicit(
    ucore_cli: Ucore,
    proxy: FaultProxy,
    test_images: TestImages,
    option: str,
    expected: tuple[str, str, str],
) -> None:
    index = test_images.multiplatform
    pull_ok(ucore_cli, f"--platform={option}", f"{proxy.address}/multiplatform:latest")
    wanted = index.for_platform(*expected)
    assert _pulled_platform(proxy, index) == [wanted]
    others = set().union(*(layer_digests(i) for i in index.images if i is not wanted))
    assert layer_digests(wanted) <= ucore_cli.blobs()
    assert not (others - layer_digests(wanted)) & ucore_cli.blobs()


def test_pull_multiplatform_no_match_lists_platforms(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    result = ucore_cli.fails(
        3, "pull", "--platform=linux/s390x", f"{proxy.address}/multiplatform:latest"
    )
    message = result.stderr
    for platform in ("linux/amd64", "linux/arm64", "linux/arm/v7"):
        assert platform in message
    assert "unknown" not in message  # the attestation is not a platform
    assert not proxy.blob_downloads()
    assert not ucore_cli.refs()


@pytest.mark.parametrize("tag", ["single", "latest"])
def test_pull_docker_media_types(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages, tag: str
) -> None:
    ref = f"{proxy.address}/dockertypes:{tag}"
    pull_ok(ucore_cli, ref)
    assert {b.digest for b in test_images.docker_busybox.blobs} <= ucore_cli.blobs()
    # The client must ask for Docker media types, or docker-registry 2.8 would down-convert.
    accepts = " ".join(r.headers.get("accept", "") for r in proxy.requests("GET", "/manifests/"))
    assert im.DOCKER_MANIFEST in accepts
    ucore_cli.ok("verify", ref)


def test_repull_downloads_nothing(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    ref = f"{proxy.address}/multilayer:latest"
    pull_ok(ucore_cli, ref)
    first = proxy.download_counts()
    assert first == {b.digest: 1 for b in test_images.multilayer.blobs}
    proxy.reset_state()
    pull_ok(ucore_cli, "--log-format=json", ref)
    assert proxy.blob_downloads() == []


def test_json_events(ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages) -> None:
    ref = f"{proxy.address}/busybox:latest"
    result = ucore_cli.ok("--log-format=json", "pull", ref)
    events = json_events(result.stderr)
    names = {e.get("event") for e in events}
    assert {"stage.start", "stage.finish", "blob.download.start", "blob.download.finish"} <= names
    layer = test_images.busybox.layers[0].blob
    finished = [
        e
        for e in events
        if e.get("event") == "blob.download.finish" and e.get("digest") == layer.digest
    ]
    assert finished and int(finished[-1]["total"]) == layer.size
    progress = [e for e in events if e.get("event") == "blob.download.progress"]
    assert all(int(e["done"]) <= int(e["total"]) for e in progress)
    # A second pull reports the blobs as already there rather than downloading them.
    again = json_events(ucore_cli.ok("pull", "--log-format", "json", ref).stderr)
    downloads = [e for e in again if e.get("event") == "blob.download.finish"]
    assert all(e.get("cached") for e in downloads)


def test_global_options_before_or_after_command(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    ref = f"{proxy.address}/busybox:latest"
    ucore_cli.ok("-v", "pull", ref)
    ucore_cli.ok("pull", ref, "-vv", "--log-format=console")


@pytest.mark.parametrize(
    "name",
    [
        "BusyBox:latest",
        "busybox:",
        "busybox:-leading-dash",
        "busybox:" + "t" * 129,
        "busybox:lat/est",
        "busybox@sha256:abc",
        "busybox@sha256:" + "A" * 64,
        "busybox@md5:" + "0" * 32,
        "../../etc/passwd:latest",
        "busy box:latest",
        "a..b:latest",
        "/busybox:latest",
        "busybox/:latest",
    ],
)
def test_invalid_reference(ucore_cli: Ucore, proxy: FaultProxy, name: str) -> None:
    ucore_cli.fails(2, "pull", f"{proxy.address}/{name}")
    assert proxy.requests() == [], "a request was built from an invalid reference"
    assert not ucore_cli.blobs() and not ucore_cli.refs()


@pytest.mark.parametrize(
    "args",
    [
        ["pull", "127.0.0.1:99999/busybox"],
        ["pull", "127.0.0.1:0/busybox"],
        ["pull", "127.0.0.1:/busybox"],
        ["pull", "[:::::]/busybox"],
        ["pull", "[::1/busybox"],
        ["pull", "user:s3cret@{proxy}/busybox"],
        ["pull", "--registry=http://user:s3cret@{proxy}", "busybox"],
        ["pull", "--registry={proxy}#fragment", "busybox"],
        ["login", "--username=u", "--password-stdin", "user:s3cret@{proxy}"],
    ],
    ids=[
        "port-out-of-range",
        "port-zero",
        "port-empty",
        "bad-ipv6",
        "unclosed-ipv6",
        "userinfo",
        "userinfo-in-registry-option",
        "fragment-in-registry-option",
        "userinfo-in-login",
    ],
)
def test_invalid_registry_part(ucore_cli: Ucore, proxy: FaultProxy, args: list[str]) -> None:
    """Refused before any URL is built (urllib3 would take port 0 for 80; requests would send
    ``user:password`` as Basic credentials), and credentials are never quoted back."""
    argv = [arg.replace("{proxy}", proxy.address) for arg in args]
    result = ucore_cli.fails(2, *argv, input="password\n")
    assert "s3cret" not in result.stderr
    assert proxy.requests() == []
    assert not ucore_cli.refs()


def _snapshot(store: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(store)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in store.rglob("*")
        if p.is_file() and p.parts[len(store.parts)] in ("blobs", "refs")
    }


def test_invalid_reference_leaves_store_unchanged(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    pull_ok(ucore_cli, f"{proxy.address}/busybox:latest")
    before = _snapshot(ucore_cli.store)
    proxy.reset_state()
    for bad in ("Busybox", "busybox:bad tag", "busybox@sha256:123"):
        ucore_cli.fails(2, "pull", f"{proxy.address}/{bad}")
    assert _snapshot(ucore_cli.store) == before
    assert proxy.requests() == []


@pytest.mark.parametrize(
    "name",
    ["busybox:no-such-tag", "no/such/image:latest", "busybox@sha256:" + "0" * 64],
)
def test_not_found(ucore_cli: Ucore, proxy: FaultProxy, name: str) -> None:
    ucore_cli.fails(3, "pull", f"{proxy.address}/{name}")
    assert not ucore_cli.refs()
    assert not proxy.blob_downloads()


def test_unreachable_registry_fails_fast(ucore_cli: Ucore) -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    ucore_cli.fails(4, "pull", f"127.0.0.1:{port}/busybox:latest", timeout=60)
    assert time.monotonic() - start < 15
    assert not ucore_cli.refs()


def test_verify_detects_tampering(
    ucore_cli: Ucore, proxy: FaultProxy, test_images: TestImages
) -> None:
    ref = f"{proxy.address}/busybox:latest"
    pull_ok(ucore_cli, ref)
    blob = ucore_cli.blob_dir() / test_images.busybox.layers[0].blob.hex
    os.chmod(blob, 0o600)
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.chmod(blob, 0o444)
    ucore_cli.fails(6, "verify", ref)


def test_same_storage_seen_directly(
    ucore_cli: Ucore, registry: RegistryServer, test_images: TestImages
) -> None:
    """Straight to docker-registry, without the proxy in between (no Host rewriting involved)."""
    pull_ok(ucore_cli, f"{registry.address}/busybox:latest")
    assert {b.digest for b in test_images.busybox.blobs} <= ucore_cli.blobs()
