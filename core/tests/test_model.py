"""References, digests and platforms: the values every path and URL is built from."""

from __future__ import annotations

import pytest

from ucore.values.errors import IntegrityError, UsageError
from ucore.values.oci import Descriptor, Digest, Image, ImageRef, Platform

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:24.04", "docker.io", "library/ubuntu", "24.04", None),
        ("someone/tool:v1", "docker.io", "someone/tool", "v1", None),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("index.docker.io/library/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ghcr.io/org/a/b:1.0", "ghcr.io", "org/a/b", "1.0", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("127.0.0.1:5000/busybox", "127.0.0.1:5000", "busybox", "latest", None),
        ("[::1]:5000/busybox:t", "[::1]:5000", "busybox", "t", None),
        (f"busybox@sha256:{HEX}", "docker.io", "library/busybox", None, HEX),
        (f"h.io/a:t@sha256:{HEX}", "h.io", "a", "t", HEX),
        ("a__b/c-d/e.f_g:TAG_1.x-y", "docker.io", "a__b/c-d/e.f_g", "TAG_1.x-y", None),
    ],
)
def test_parse_applies_docker_defaults(text, registry, repository, tag, digest) -> None:
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert (ref.digest.hex if ref.digest else None) == digest


def test_default_registry_is_configurable_and_only_hub_gets_library() -> None:
    ref = ImageRef.parse("busybox", default_registry="127.0.0.1:5000")
    assert ref.name == "127.0.0.1:5000/busybox"
    assert str(ref) == "127.0.0.1:5000/busybox:latest"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ubuntu",
        "Ubuntu",
        "ubuntu:",
        "ubuntu:.bad",
        "ubuntu:" + "t" * 129,
        "a/../b",
        "../etc/passwd",
        "a//b",
        "/abs",
        "a/b/",
        "ubuntu@sha256:short",
        f"ubuntu@sha512:{HEX}",
        f"ubuntu@sha256:{HEX.upper()}",
        "bad_host!.io/x",
        "host.io:99999999/x",
        "x" * 300,
        "a\nb",
        "a%2Fb",
    ],
)
def test_parse_rejects_malformed_references(text: str) -> None:
    with pytest.raises(UsageError, match="invalid reference"):
        ImageRef.parse(text)


def test_familiar_name_hides_docker_hub_defaults() -> None:
    assert ImageRef.parse("ubuntu:24.04").familiar == "ubuntu:24.04"
    assert ImageRef.parse("me/x").familiar == "me/x:latest"
    assert ImageRef.parse("h.io/x").familiar == "h.io/x:latest"


@pytest.mark.parametrize(
    "text", ["sha256:" + "g" * 64, "sha256:" + "a" * 63, "md5:abc", "sha256", 42, None]
)
def test_digest_rejects_anything_but_sha256_hex(text: object) -> None:
    with pytest.raises(IntegrityError):
        Digest.parse(text)


def test_platform_parse_and_match() -> None:
    assert str(Platform.parse("linux/amd64")) == "linux/amd64"
    assert Platform.parse("linux/x86_64") == Platform("linux", "amd64")
    assert Platform.parse("linux/arm/v7").variant == "v7"
    want = Platform.parse("linux/arm64")
    assert want.matches(Platform("linux", "arm64", "v8"))
    assert Platform.parse("linux/arm64/v8").matches(Platform("linux", "arm64"))
    assert not Platform.parse("linux/arm/v7").matches(Platform("linux", "arm", "v6"))
    assert not want.matches(Platform("linux", "amd64"))
    for bad in ("linux", "linux/amd64/v1/x", "Linux/AMD64", "linux/../x"):
        with pytest.raises(UsageError):
            Platform.parse(bad)


def test_descriptor_validates_size_and_digest() -> None:
    good = {"mediaType": "x", "digest": f"sha256:{HEX}", "size": 3}
    assert Descriptor.from_json(good, 10).size == 3
    for bad in (
        {**good, "size": -1},
        {**good, "size": True},
        {**good, "size": "3"},
        {**good, "size": 11},
        {**good, "digest": "sha256:../../etc"},
        [],
    ):
        with pytest.raises(IntegrityError):
            Descriptor.from_json(bad, 10)


def test_values_built_directly_are_validated_as_parsed_ones_are() -> None:
    """The rules live in the attrs validators, so a plugin that builds a value itself (a
    mirror's ``ImageRef(host, repo, tag)``, a digest from its own hash) meets them too, and so
    does a value varied with ``attrs.evolve``."""
    import attrs

    digest = Digest("a" * 64)
    with pytest.raises(IntegrityError, match="invalid sha256 digest"):
        Digest("A" * 64)
    ref = ImageRef("127.0.0.1:5000", "team/app", "v1")
    for bad in (
        {"registry": "bad host!"},
        {"registry": "h:99999"},
        {"repository": "Team/App"},
        {"repository": "a//b"},
        {"tag": "-lead"},
    ):
        with pytest.raises(UsageError):
            attrs.evolve(ref, **bad)
    with pytest.raises(TypeError):
        attrs.evolve(ref, digest=str(digest))
    with pytest.raises(UsageError, match="invalid platform architecture"):
        Platform("linux", "AMD 64")
    with pytest.raises(IntegrityError, match="invalid size"):
        Descriptor("application/x", digest, -1)
    with pytest.raises(IntegrityError, match="invalid size"):
        Descriptor("application/x", digest, True)
    loose = Descriptor("application/x", digest, 3, urls=["u", 1], annotations={"k": 2})
    assert loose.urls == () and loose.annotations == {"k": "2"}
    assert Descriptor("application/x", digest, 3, urls=["u"]).urls == ("u",)
    with pytest.raises(IntegrityError, match="layers must be descriptors"):
        Image(ref, digest, digest, ["not a descriptor"])  # type: ignore[list-item]
    assert Image(ref, digest, digest, [loose]).layers == (loose,)
