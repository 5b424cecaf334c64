"""The harness, checked without ucore: if these fail, the ucore tests prove nothing.

skopeo (containers/image, the Go client that Podman and CRI-O use) is the reference client: it
must accept our images, indexes and auth setups exactly as they are served.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard
from support.faultproxy import FaultProxy
from support.registries import AuthRegistry

from ucore.testing import images as im
from ucore.testing.images import TestImages
from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = shutil.which("skopeo")
    if binary is None:
        pytest.skip("skopeo not installed (Debian package skopeo)")
    home = tmp_path_factory.mktemp("skopeo-home")
    policy = home / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(home)}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [binary, "--policy", str(policy), *args],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


# --- images --------------------------------------------------------------------------------


def _untar(layer: im.Layer) -> bytes:
    if layer.compression == "gzip":
        return gzip.decompress(layer.blob.data)
    if layer.compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(layer.blob.data)
    return layer.blob.data


def test_images_are_deterministic(test_images: TestImages) -> None:
    assert im.all_test_images() == test_images


def test_diff_ids_and_descriptors_match(test_images: TestImages) -> None:
    for content in test_images.tags().values():
        images = content.images if isinstance(content, im.Index) else (content,)
        for image in images:
            config = image.config_json()
            manifest = json.loads(image.manifest.data)
            assert manifest["config"]["digest"] == image.config.digest
            assert [d["digest"] for d in manifest["layers"]] == [
                layer.blob.digest for layer in image.layers
            ]
            if image.os != "unknown":
                assert config["rootfs"]["diff_ids"] == [
                    "sha256:" + hashlib.sha256(_untar(layer)).hexdigest() for layer in image.layers
                ]
                assert (config["os"], config["architecture"]) == (image.os, image.architecture)


def test_multilayer_compressions_and_media_types(test_images: TestImages) -> None:
    layers = test_images.multilayer.layers
    assert [layer.compression for layer in layers] == ["gzip", "zstd", "none"]
    assert layers[0].blob.data[:2] == b"\x1f\x8b"
    assert layers[1].blob.data[:4] == b"\x28\xb5\x2f\xfd"
    assert [layer.blob.media_type for layer in layers] == [
        im.OCI_LAYER_GZIP,
        im.OCI_LAYER_ZSTD,
        im.OCI_LAYER,
    ]


def test_docker_variant_uses_docker_media_types(test_images: TestImages) -> None:
    manifest = json.loads(test_images.docker_busybox.manifest.data)
    assert manifest["mediaType"] == im.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == im.DOCKER_CONFIG
    assert {d["mediaType"] for d in manifest["layers"]} == {im.DOCKER_LAYER_GZIP}
    assert json.loads(test_images.docker_list.manifest.data)["mediaType"] == im.DOCKER_MANIFEST_LIST


# --- the registry and skopeo ---------------------------------------------------------------


def test_skopeo_inspects_busybox(
    skopeo: Any, registry: RegistryServer, test_images: TestImages
) -> None:
    out = json.loads(
        skopeo(
            "inspect", "--tls-verify=false", f"docker://{registry.address}/busybox:latest"
        ).stdout
    )
    assert out["Digest"] == test_images.busybox.digest
    assert out["Layers"] == [test_images.busybox.layers[0].blob.digest]
    assert "UCORE_TEST_IMAGE=busybox" in out["Env"]


def test_skopeo_copies_every_image_to_oci_layout(
    skopeo: Any, registry: RegistryServer, test_images: TestImages, tmp_path: Path
) -> None:
    for ref in ("busybox:latest", "multilayer:latest", "nested/path/busybox:latest"):
        dest = tmp_path / ref.replace("/", "_").replace(":", "_")
        skopeo(
            "copy", "--src-tls-verify=false", f"docker://{registry.address}/{ref}", f"oci:{dest}"
        )
        pushed = test_images.tags()[ref]
        assert isinstance(pushed, im.Image)
        blobs = dest / "blobs" / "sha256"
        (entry,) = json.loads((dest / "index.json").read_text())["manifests"]
        manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
        assert (blobs / pushed.config.hex).read_bytes() == pushed.config.data
        for layer, copied in zip(pushed.layers, manifest["layers"]):
            data = (blobs / copied["digest"].split(":")[1]).read_bytes()
            if layer.compression == "none":
                # The oci: transport gzips uncompressed layers; the content must survive.
                assert hashlib.sha256(gzip.decompress(data)).hexdigest() == layer.diff_id[7:]
            else:
                assert data == layer.blob.data


def test_skopeo_sees_the_multiplatform_index(
    skopeo: Any, registry: RegistryServer, test_images: TestImages
) -> None:
    ref = f"docker://{registry.address}/multiplatform:latest"
    raw = skopeo("inspect", "--tls-verify=false", "--raw", ref).stdout
    assert raw.encode() == test_images.multiplatform.manifest.data
    index = json.loads(raw)
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert platforms[0] == ("unknown", "unknown")
    assert (
        index["manifests"][0]["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
    )
    assert {("linux", "amd64"), ("linux", "arm64"), ("linux", "arm")} <= set(platforms)
    # A platform-aware client skips the attestation and finds each platform.
    for arch, variant in (("arm64", "v8"), ("arm", "v7"), ("amd64", "")):
        args = ["--override-os", "linux", "--override-arch", arch]
        if variant:
            args += ["--override-variant", variant]
        out = json.loads(skopeo(*args, "inspect", "--tls-verify=false", "--config", ref).stdout)
        assert out["architecture"] == arch
        assert f"PLATFORM={arch}" in out["config"]["Env"]


def test_skopeo_sees_docker_media_types(
    skopeo: Any, registry: RegistryServer, test_images: TestImages
) -> None:
    base = f"docker://{registry.address}/dockertypes"
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"{base}:latest").stdout
    assert raw.encode() == test_images.docker_list.manifest.data
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"{base}:single").stdout
    assert json.loads(raw)["mediaType"] == im.DOCKER_MANIFEST


def test_registry_refuses_schema1_and_huge_manifests(registry: RegistryServer) -> None:
    pusher = Pusher(registry.url)
    resp = pusher.put_manifest(
        "hostile", "s1", im.schema1_manifest(), im.DOCKER_SCHEMA1_SIGNED, check=False
    )
    assert resp.status_code == 400
    huge = b'{"schemaVersion":2,"x":"' + b"y" * (5 << 20) + b'"}'
    assert (
        pusher.put_manifest("hostile", "huge", huge, im.OCI_MANIFEST, check=False).status_code
        == 400
    )


# --- authentication ------------------------------------------------------------------------


def test_basic_auth_registry(skopeo: Any, basic_registry: AuthRegistry) -> None:
    ref = f"docker://{basic_registry.address}/busybox:latest"
    creds = f"{basic_registry.username}:{basic_registry.password}"
    skopeo("inspect", "--tls-verify=false", "--creds", creds, ref)
    assert skopeo("inspect", "--tls-verify=false", "--no-creds", ref, check=False).returncode != 0
    bad = skopeo("inspect", "--tls-verify=false", "--creds", "ucore-tester:wrong", ref, check=False)
    assert bad.returncode != 0


def test_token_auth_registry(skopeo: Any, token_registry: AuthRegistry) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    ref = f"docker://{token_registry.address}/multilayer:latest"
    creds = f"{token_registry.username}:{token_registry.password}"
    skopeo("inspect", "--tls-verify=false", "--creds", creds, ref)
    assert any(r.user == token_registry.username and r.token for r in tokens.requests)
    skopeo("inspect", "--tls-verify=false", "--no-creds", ref)  # anonymous pull allowed
    assert any(r.user is None and r.token for r in tokens.requests)
    assert (
        skopeo(
            "inspect", "--tls-verify=false", "--creds", "ucore-tester:wrong", ref, check=False
        ).returncode
        != 0
    )


def test_token_auth_private(skopeo: Any, private_token_registry: AuthRegistry) -> None:
    ref = f"docker://{private_token_registry.address}/busybox:latest"
    assert skopeo("inspect", "--tls-verify=false", "--no-creds", ref, check=False).returncode != 0
    creds = f"{private_token_registry.username}:{private_token_registry.password}"
    skopeo("inspect", "--tls-verify=false", "--creds", creds, ref)


def test_token_server_grants_and_counts(token_registry: AuthRegistry) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    s = session()
    scope = {"service": tokens.service, "scope": "repository:busybox:pull,push"}
    granted = s.get(
        tokens.realm, params=scope, auth=(token_registry.username, token_registry.password)
    )
    assert granted.status_code == 200
    assert tokens.requests[-1].granted == [
        {"type": "repository", "name": "busybox", "actions": ["pull", "push"]}
    ]
    assert s.get(tokens.realm, params=scope).status_code == 200
    assert tokens.requests[-1].granted[0]["actions"] == ["pull"]  # anonymous: pull only
    assert s.get(tokens.realm, params=scope, auth=("x", "y")).status_code == 401
    assert tokens.tokens_issued == 2
    resp = s.get(
        f"{token_registry.url}/v2/busybox/manifests/latest",
        headers={"Accept": im.OCI_MANIFEST, "Authorization": f"Bearer {granted.json()['token']}"},
    )
    assert resp.status_code == 200


# --- the fault proxy -----------------------------------------------------------------------


def _blob_url(proxy: FaultProxy, test_images: TestImages) -> tuple[str, im.Blob]:
    blob = test_images.busybox.layers[0].blob
    return f"{proxy.url}/v2/busybox/blobs/{blob.digest}", blob


def test_proxy_forwards_and_records(proxy: FaultProxy, test_images: TestImages) -> None:
    url, blob = _blob_url(proxy, test_images)
    s = session()
    assert s.head(url).headers["Content-Length"] == str(blob.size)
    assert s.get(url).content == blob.data
    resp = s.get(f"{proxy.url}/v2/busybox/manifests/latest", headers={"Accept": im.OCI_MANIFEST})
    assert resp.content == test_images.busybox.manifest.data
    assert [r.method for r in proxy.requests()] == ["HEAD", "GET", "GET"]
    assert proxy.download_counts() == {blob.digest: 1}
    assert proxy.requests()[2].headers["accept"] == im.OCI_MANIFEST


def test_proxy_truncates_then_range_resumes(proxy: FaultProxy, test_images: TestImages) -> None:
    url, blob = _blob_url(proxy, test_images)
    proxy.truncate(after=100_000)
    s = session()
    got = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError), s.get(url, stream=True) as resp:
        for chunk in resp.iter_content(8192):
            got += chunk
    assert 0 < len(got) <= 100_000
    assert proxy.requests()[0].bytes_sent == 100_000
    resumed = s.get(url, headers={"Range": f"bytes={len(got)}-"})
    assert resumed.status_code == 206
    assert resumed.headers["Content-Range"] == f"bytes {len(got)}-{blob.size - 1}/{blob.size}"
    assert bytes(got) + resumed.content == blob.data
    assert proxy.requests()[-1].headers["range"] == f"bytes={len(got)}-"


def test_proxy_corrupts_same_length(proxy: FaultProxy, test_images: TestImages) -> None:
    url, blob = _blob_url(proxy, test_images)
    proxy.corrupt(times=1)
    data = session().get(url).content
    assert len(data) == blob.size and data != blob.data
    assert session().get(url).content == blob.data


def test_proxy_429_and_503(proxy: FaultProxy, test_images: TestImages) -> None:
    url, _ = _blob_url(proxy, test_images)
    proxy.fail(429, times=1, retry_after="1")
    proxy.fail(503, times=2)
    s = session()
    first = s.get(url)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "1")
    assert [s.get(url).status_code for _ in range(3)] == [503, 503, 200]


def test_proxy_resets_connections(proxy: FaultProxy, test_images: TestImages) -> None:
    url, blob = _blob_url(proxy, test_images)
    proxy.reset(times=1)
    with pytest.raises(requests.ConnectionError):
        session().get(url)
    assert session().get(url).content == blob.data


def test_proxy_redirects_to_another_host(
    proxy: FaultProxy, blob_host: FaultProxy, test_images: TestImages
) -> None:
    url, blob = _blob_url(proxy, test_images)
    assert blob_host.host != proxy.host
    proxy.redirect(blob_host.url)
    resp = session().get(url, headers={"Authorization": "Bearer secret"})
    assert resp.content == blob.data
    assert resp.history and resp.history[0].status_code == 307
    assert proxy.requests()[0].headers["authorization"] == "Bearer secret"
    (fetched,) = blob_host.requests()
    assert "authorization" not in fetched.headers  # requests drops it across hosts
    # ...and the blob host would have recorded it had it arrived:
    session().get(f"{blob_host.url}/v2/busybox/blobs/{blob.digest}", headers={"Authorization": "x"})
    assert blob_host.requests()[-1].headers["authorization"] == "x"


def test_proxy_stalls_until_released(proxy: FaultProxy, test_images: TestImages) -> None:
    url, blob = _blob_url(proxy, test_images)
    proxy.stall(after=50_000)
    with session().get(url, stream=True) as resp:
        assert proxy.stalled.wait(10)
        assert proxy.requests()[0].bytes_sent == 50_000
        proxy.release()
        assert resp.content == blob.data


def test_proxy_throttles(proxy: FaultProxy, test_images: TestImages) -> None:
    url, blob = _blob_url(proxy, test_images)
    proxy.throttle(bytes_per_second=blob.size * 4)
    start = time.monotonic()
    assert session().get(url).content == blob.data
    assert time.monotonic() - start >= 0.2


def test_proxy_serves_canned_content(proxy: FaultProxy) -> None:
    proxy.serve(
        "/v2/busybox/manifests/evil", body=b"{oops", headers={"Content-Type": im.OCI_MANIFEST}
    )
    resp = session().get(f"{proxy.url}/v2/busybox/manifests/evil?x=1")
    assert (resp.status_code, resp.content) == (200, b"{oops")
    assert session().get(f"{proxy.url}/v2/busybox/manifests/nope").status_code == 404


def test_proxy_mangles_range_and_headers(proxy: FaultProxy, test_images: TestImages) -> None:
    url, _ = _blob_url(proxy, test_images)
    proxy.mangle_range("ignore", times=1)
    proxy.mangle_range("shift", by=1000, times=1)
    proxy.inject_headers({"Content-Encoding": "identity-not", "X-Test": "1"}, times=1)
    s = session()
    ignored = s.get(url, headers={"Range": "bytes=5000-"})
    assert (ignored.status_code, ignored.headers["X-Test"]) == (200, "1")
    assert ignored.raw.headers["Content-Encoding"] == "identity-not"
    shifted = s.get(url, headers={"Range": "bytes=5000-"})
    assert shifted.status_code == 206
    assert shifted.headers["Content-Range"].startswith("bytes 4000-")
    assert s.get(url).headers.get("X-Test") is None
    assert [r.fault for r in proxy.requests()] == ["range", "range", None]


def test_proxy_fails_with_challenge(proxy: FaultProxy, token_registry: AuthRegistry) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    challenge = tokens.challenge("repository:busybox:pull", error="invalid_token")
    proxy.fail(401, match="/manifests/", headers={"WWW-Authenticate": challenge})
    resp = session().get(f"{proxy.url}/v2/busybox/manifests/latest")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == challenge
    assert tokens.realm in challenge
