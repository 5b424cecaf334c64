"""Manifest and index parsing: the edge where registry JSON becomes validated values."""

from __future__ import annotations

import json

import pytest

from ucore.storage import manifest as mf
from ucore.values.errors import IntegrityError, NotFoundError, RegistryError
from ucore.values.oci import Platform

D = "sha256:" + "b" * 64


def manifest(**extra: object) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": {"mediaType": mf.OCI_CONFIG, "digest": D, "size": 10},
        "layers": [{"mediaType": mf.LAYER_TYPES[1], "digest": D, "size": 20}],
        **extra,
    }


def entry(platform: dict[str, str], **annotations: str) -> dict[str, object]:
    out: dict[str, object] = {
        "mediaType": mf.OCI_MANIFEST,
        "digest": D,
        "size": 5,
        "platform": platform,
    }
    if annotations:
        out["annotations"] = annotations
    return out


def raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_parses_an_image_manifest() -> None:
    doc = mf.parse(raw(manifest()), mf.OCI_MANIFEST)
    assert isinstance(doc, mf.Manifest)
    assert doc.config.size == 10
    assert [layer.size for layer in doc.layers] == [20]
    mf.check_image_manifest(doc)


def test_index_selects_platform_and_skips_attestations() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_INDEX,
        "manifests": [
            entry(
                {"os": "unknown", "architecture": "unknown"},
                **{"vnd.docker.reference.type": "attestation-manifest"},
            ),
            entry({"os": "linux", "architecture": "arm64", "variant": "v8"}),
            entry({"os": "linux", "architecture": "amd64"}),
        ],
    }
    doc = mf.parse(raw(index))
    assert isinstance(doc, mf.Index)
    assert doc.select(Platform.parse("linux/amd64")).platform == Platform("linux", "amd64")
    assert doc.select(Platform.parse("linux/arm64")).platform.architecture == "arm64"
    with pytest.raises(NotFoundError, match=r"available: linux/amd64, linux/arm64/v8\)"):
        doc.select(Platform.parse("linux/s390x"))


def test_index_entries_with_platforms_ucore_cannot_name_are_skipped() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_INDEX,
        "manifests": [
            entry({"os": "linux", "architecture": "AMD 64"}),
            entry({"os": "linux", "architecture": "amd64", "variant": "v1/../x"}),
            entry({"os": "Linux", "architecture": "amd64"}),
            entry({"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ],
    }
    doc = mf.parse(raw(index))
    assert isinstance(doc, mf.Index)
    assert [str(d.platform) for d in doc.platforms()] == ["linux/arm64/v8"]
    with pytest.raises(NotFoundError, match=r"available: linux/arm64/v8\)"):
        doc.select(Platform.parse("linux/amd64"))


@pytest.mark.parametrize(
    ("doc", "ctype", "error"),
    [
        ({"schemaVersion": 1, "fsLayers": []}, "", RegistryError),
        (manifest(), mf.DOCKER_SCHEMA1[1], RegistryError),
        (manifest(), mf.OCI_INDEX, IntegrityError),
        ({**manifest(), "manifests": []}, "", IntegrityError),
        (manifest(schemaVersion=3), "", IntegrityError),
        (manifest(layers="x"), "", IntegrityError),
        (manifest(config={"digest": D, "size": mf.MAX_CONFIG + 1}), "", IntegrityError),
        (manifest(mediaType="application/x-other"), "", IntegrityError),
        ([1, 2], "", IntegrityError),
    ],
)
def test_refuses_bad_or_ambiguous_documents(doc: object, ctype: str, error: type) -> None:
    with pytest.raises(error):
        mf.parse(raw(doc), ctype)


def test_refuses_invalid_json_and_oversized_documents() -> None:
    with pytest.raises(IntegrityError, match="not valid JSON"):
        mf.parse(b"{nope")
    with pytest.raises(IntegrityError, match="larger than"):
        mf.parse(b" " * (mf.MAX_MANIFEST + 1))


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_refuses_documents_nested_past_the_recursion_limit(opening: bytes) -> None:
    deep = opening * 100_000
    with pytest.raises(IntegrityError, match="manifest is not valid JSON"):
        mf.parse(deep)
    with pytest.raises(IntegrityError, match="image config is not valid JSON"):
        mf.parse_config(deep)


def test_refuses_artifacts_and_unknown_layers_and_foreign_layers_without_opt_in() -> None:
    artifact = mf.parse(
        raw(
            manifest(
                config={"mediaType": "application/vnd.cncf.helm.config", "digest": D, "size": 1}
            )
        )
    )
    assert isinstance(artifact, mf.Manifest)
    with pytest.raises(IntegrityError, match="not a container image"):
        mf.check_image_manifest(artifact)
    odd = mf.parse(raw(manifest(layers=[{"mediaType": "text/plain", "digest": D, "size": 1}])))
    assert isinstance(odd, mf.Manifest)
    with pytest.raises(IntegrityError, match="unsupported layer"):
        mf.check_image_manifest(odd)
    foreign_layer = {
        "mediaType": mf.FOREIGN_LAYER_TYPES[0],
        "digest": D,
        "size": 1,
        "urls": ["https://example.invalid/layer"],
    }
    foreign = mf.parse(raw(manifest(layers=[foreign_layer])))
    assert isinstance(foreign, mf.Manifest)
    with pytest.raises(RegistryError, match="allow-foreign-layers"):
        mf.check_image_manifest(foreign)
    mf.check_image_manifest(foreign, allow_foreign=True)
