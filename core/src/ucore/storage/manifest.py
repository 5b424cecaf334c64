"""Parsing of OCI and Docker v2 manifests and indexes: the edge where registry JSON becomes
validated values.

Ambiguous documents (CVE-2021-41190: a manifest that is also an index, or whose declared type
disagrees with the transport's) are refused, as are schema-1 manifests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from ucore.values.errors import IntegrityError, NotFoundError, RegistryError
from ucore.values.oci import Descriptor, Digest, Platform

if TYPE_CHECKING:
    from ucore.storage.store import Store
    from ucore.values.oci import Image

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
#: What we ask registries for, best first.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
FOREIGN_LAYER_TYPES = tuple(t for t in LAYER_TYPES if "foreign" in t or "nondistributable" in t)

MAX_MANIFEST = 4 << 20
MAX_CONFIG = 16 << 20
MAX_LAYER = 1 << 40
MAX_LAYERS = 1000
MAX_INDEX_ENTRIES = 1000


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]

    def platforms(self) -> list[Descriptor]:
        """Entries that are runnable images: attestations and unknown platforms skipped."""
        return [
            d
            for d in self.manifests
            if d.platform is not None
            and d.platform.os != "unknown"
            and d.annotations.get("vnd.docker.reference.type") != "attestation-manifest"
            and d.media_type in MANIFEST_TYPES
        ]

    def select(self, want: Platform) -> Descriptor:
        candidates = self.platforms()
        for desc in candidates:
            assert desc.platform is not None
            if want.matches(desc.platform):
                return desc
        offered = ", ".join(sorted({str(d.platform) for d in candidates})) or "none"
        raise NotFoundError(f"no image for platform {want} (available: {offered})")


def parse(raw: bytes, content_type: Optional[str] = None) -> Union[Manifest, Index]:
    """Parse a manifest or index; ``content_type`` is what the transport claimed, if anything."""
    if len(raw) > MAX_MANIFEST:
        raise IntegrityError(f"manifest larger than {MAX_MANIFEST} bytes")
    ctype = (content_type or "").split(";")[0].strip()
    if ctype in DOCKER_SCHEMA1:
        raise RegistryError(
            "the registry serves this image only as a Docker schema-1 manifest, which is"
            " deprecated and unsupported; push it again with a current client"
        )
    doc = load_json(raw, "manifest")
    if not isinstance(doc, dict):
        raise IntegrityError("manifest is not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise RegistryError(
            "the registry serves this image only as a Docker schema-1 manifest, which is"
            " deprecated and unsupported; push it again with a current client"
        )
    if doc.get("schemaVersion") != 2:
        raise IntegrityError(f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise IntegrityError("manifest mediaType is not a string")
    known = INDEX_TYPES + MANIFEST_TYPES
    if declared and ctype in known and declared != ctype:
        raise IntegrityError(f"manifest says it is {declared} but was served as {ctype}")
    if "manifests" in doc and ("layers" in doc or "config" in doc):
        raise IntegrityError("ambiguous document: both an index and a manifest")
    kind = declared or (ctype if ctype in known else None)
    if kind is None:
        kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if kind in INDEX_TYPES:
        return _parse_index(doc, kind)
    if kind in MANIFEST_TYPES:
        return _parse_manifest(doc, kind)
    raise IntegrityError(f"unsupported manifest type {kind!r}")


def _parse_index(doc: dict[str, Any], kind: str) -> Index:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise IntegrityError("index has no manifests list")
    if len(entries) > MAX_INDEX_ENTRIES:
        raise IntegrityError(f"index lists more than {MAX_INDEX_ENTRIES} manifests")
    return Index(kind, tuple(Descriptor.from_json(e, MAX_MANIFEST) for e in entries))


def _parse_manifest(doc: dict[str, Any], kind: str) -> Manifest:
    config = Descriptor.from_json(doc.get("config"), MAX_CONFIG)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise IntegrityError("manifest has no layers list")
    if len(layers) > MAX_LAYERS:
        raise IntegrityError(f"manifest lists more than {MAX_LAYERS} layers")
    return Manifest(kind, config, tuple(Descriptor.from_json(e, MAX_LAYER) for e in layers))


def check_image_manifest(manifest: Manifest, allow_foreign: bool = False) -> None:
    """Refuse artifacts that are not container images, and foreign layers unless opted in."""
    if manifest.config.media_type not in CONFIG_TYPES:
        raise IntegrityError(
            f"not a container image: config media type {manifest.config.media_type!r}"
        )
    for layer in manifest.layers:
        if layer.media_type not in LAYER_TYPES:
            raise IntegrityError(f"unsupported layer media type {layer.media_type!r}")
        if layer.media_type in FOREIGN_LAYER_TYPES and layer.urls and not allow_foreign:
            raise RegistryError(
                f"layer {layer.digest.short} is a foreign layer served from {layer.urls[0]};"
                " pass --allow-foreign-layers to download it"
            )


def write_manifest(config_digest: Digest, config_size: int, layers: list[dict[str, Any]]) -> bytes:
    """The bytes of an OCI image manifest ucore writes itself (``load`` of a docker-save
    archive, ``import``): compact JSON, as registries serve them."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": str(config_digest), "size": config_size},
        "layers": layers,
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def load_json(raw: bytes, what: str) -> Any:
    """JSON from outside; ``what`` names it in the error. Arrays nested a few thousand deep
    exhaust :mod:`json`'s recursion, which is malformed input too, not a bug of ours."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise IntegrityError(f"{what} is not valid JSON") from None


def parse_config(raw: bytes) -> dict[str, Any]:
    doc = load_json(raw, "image config")
    if not isinstance(doc, dict):
        raise IntegrityError("image config is not a JSON object")
    return doc


def read_config(store: Store, image: Image) -> dict[str, Any]:
    """A stored image's config, read from its blob bounded and parsed."""
    return parse_config(store.read_blob(image.config_digest, MAX_CONFIG))


def config_diff_ids(config: dict[str, Any]) -> list[Digest]:
    """The config's ``rootfs.diff_ids``: the digest of each layer's tar, in order."""
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        raise IntegrityError("image config has no rootfs.diff_ids")
    return [Digest.parse(d) for d in ids]


def config_platform(config: dict[str, Any]) -> Optional[Platform]:
    return Platform.from_json(config)
