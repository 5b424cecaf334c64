"""OCI and Docker images built from scratch with :mod:`tarfile`, for tests that must not need
Docker, network access or root.

Everything here is deterministic (fixed mtimes, owners and gzip headers), so the same builder
gives the same digests in every run and on every host with the same ``/bin/busybox``; tests can
therefore push once per session and compare digests byte for byte.

The images exercise what real registries serve: several layer compressions (gzip, zstd, plain
tar), whiteouts, links and odd permissions, multi-platform indexes with buildx attestation
entries, and both OCI and Docker v2 schema 2 media types.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union

import zstandard

# Media types, named so that tests read like the specifications.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
IN_TOTO = "application/vnd.in-toto+json"

#: Layer media types by compression, for OCI and for Docker manifests.
OCI_LAYER_TYPES = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}
DOCKER_LAYER_TYPES = {
    "gzip": DOCKER_LAYER_GZIP,
    "none": "application/vnd.docker.image.rootfs.diff.tar",
}

#: One fixed timestamp for every tar entry and config date: digests must not depend on the clock.
EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Applets linked to busybox in the test image; enough for shell scripts in engine tests.
BUSYBOX_APPLETS = (
    "sh", "ls", "cat", "echo", "true", "false", "id", "env", "sleep", "pwd", "mkdir", "rm",
    "touch", "uname", "whoami", "test", "grep", "printenv", "stat", "ln", "readlink", "head",
    "wc", "hostname", "chmod", "cp", "mv", "sed", "ps", "kill",
)  # fmt: skip


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted JSON: stable bytes, hence stable digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def host_platform() -> tuple[str, str, Optional[str]]:
    """(os, architecture, variant) of this host in OCI terms, as a client picks by default."""
    machine = platform.machine().lower()
    arch = {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "armv7l": "arm",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)
    variant = {"arm64": "v8", "arm": "v7"}.get(arch)
    return "linux", arch, variant


@dataclass(frozen=True)
class Blob:
    """Content as a registry stores it: the bytes plus the media type a descriptor gives them."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


# --------------------------------------------------------------------------------------------
# Layers


class LayerBuilder:
    """Collects tar entries for one layer, in order, and renders them compressed.

    Missing parent directories are added (0755) the way ``docker build`` diffs include them, so a
    test lists only the entries it cares about. Names are stored without a leading ``/``.
    """

    def __init__(self) -> None:
        self._members: list[tuple[tarfile.TarInfo, Optional[bytes]]] = []
        self._dirs: set[str] = set()

    @staticmethod
    def _name(path: str) -> str:
        name = str(PurePosixPath("/" + path.lstrip("/")))[1:]
        if not name:
            raise ValueError("the root itself is not a layer entry")
        return name

    def _info(
        self, path: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self._name(path))
        info.type = kind
        info.mode = mode
        info.mtime = EPOCH
        info.uid, info.gid = uid, gid
        info.uname = "root" if uid == 0 else ""
        info.gname = "root" if gid == 0 else ""
        return info

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._dirs:
                self.dir(parent)

    def _add(self, info: tarfile.TarInfo, data: Optional[bytes] = None) -> LayerBuilder:
        self._parents(info.name)
        self._members.append((info, data))
        return self

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> LayerBuilder:
        info = self._info(path, tarfile.DIRTYPE, mode, uid, gid)
        self._parents(info.name)
        self._dirs.add(info.name)
        self._members.append((info, None))
        return self

    def file(
        self,
        path: str,
        data: Union[bytes, str] = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
    ) -> LayerBuilder:
        raw = data.encode() if isinstance(data, str) else data
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(raw)
        return self._add(info, raw)

    def symlink(self, path: str, target: str) -> LayerBuilder:
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        return self._add(info)

    def hardlink(self, path: str, target: str) -> LayerBuilder:
        """``target`` is another entry's path; tar stores it relative to the root."""
        info = self._info(path, tarfile.LNKTYPE, 0o644)
        info.linkname = self._name(target)
        return self._add(info)

    def whiteout(self, path: str) -> LayerBuilder:
        """Deletes ``path`` from lower layers (an empty ``.wh.NAME`` file beside it)."""
        p = PurePosixPath("/" + path.lstrip("/"))
        return self.file(str(p.parent / (".wh." + p.name)), b"", 0o644)

    def opaque(self, directory: str) -> LayerBuilder:
        """Hides everything lower layers put in ``directory`` (``.wh..wh..opq``)."""
        return self.file(str(PurePosixPath("/" + directory.lstrip("/")) / ".wh..wh..opq"))

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for info, data in self._members:
                archive.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


@dataclass(frozen=True)
class Layer:
    """A layer as pushed (``blob``: compressed bytes) and as configs name it (``diff_id``)."""

    blob: Blob
    diff_id: str
    compression: str


def compress(data: bytes, compression: str) -> bytes:
    """gzip with a zero mtime and no file name, zstd at level 3, or the tar itself (``none``)."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return bytes(zstandard.ZstdCompressor(level=3).compress(data))
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def make_layer(
    tar_bytes: bytes, compression: str = "gzip", media_types: Optional[dict[str, str]] = None
) -> Layer:
    types = media_types or OCI_LAYER_TYPES
    return Layer(
        blob=Blob(types[compression], compress(tar_bytes, compression)),
        diff_id=sha256_digest(tar_bytes),
        compression=compression,
    )


# --------------------------------------------------------------------------------------------
# Images and indexes


@dataclass(frozen=True)
class Image:
    """One platform's image: its manifest, config and layers (push blobs before the manifest)."""

    manifest: Blob
    config: Blob
    layers: tuple[Layer, ...]
    os: str
    architecture: str
    variant: Optional[str] = None

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Config first, then layers: everything the manifest references."""
        return (self.config, *(layer.blob for layer in self.layers))

    @property
    def platform(self) -> dict[str, str]:
        plat = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            plat["variant"] = self.variant
        return plat

    @property
    def platform_string(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def config_json(self) -> dict[str, Any]:
        return dict(json.loads(self.config.data))


def build_image(
    layers: list[Layer],
    *,
    config: Optional[dict[str, Any]] = None,
    os: str = "linux",
    architecture: Optional[str] = None,
    variant: Optional[str] = None,
    docker: bool = False,
    history: Optional[list[str]] = None,
    annotations: Optional[dict[str, str]] = None,
) -> Image:
    """Image config (``rootfs.diff_ids`` from the uncompressed layers) plus its manifest.

    :param config: the ``config`` section (Cmd, Env, WorkingDir, …).
    :param docker: Docker v2 schema 2 media types instead of OCI ones.
    """
    if architecture is None:
        os, architecture, variant = host_platform()
    image_config: dict[str, Any] = {
        "architecture": architecture,
        "os": os,
        "created": CREATED,
        "config": config or {"Env": [f"PATH={DEFAULT_PATH}"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": CREATED, "created_by": step}
            for step in (history or [f"layer {i}" for i in range(len(layers))])
        ],
    }
    if variant:
        image_config["variant"] = variant
    config_blob = Blob(DOCKER_CONFIG if docker else OCI_CONFIG, canonical_json(image_config))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = annotations
    return Image(
        manifest=Blob(manifest["mediaType"], canonical_json(manifest)),
        config=config_blob,
        layers=tuple(layers),
        os=os,
        architecture=architecture,
        variant=variant,
    )


@dataclass(frozen=True)
class Index:
    """A multi-platform index (OCI) or manifest list (Docker) and the images it points to."""

    manifest: Blob
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def for_platform(self, os: str, architecture: str, variant: Optional[str] = None) -> Image:
        for image in self.images:
            if (image.os, image.architecture) == (os, architecture) and (
                variant is None or image.variant == variant
            ):
                return image
        raise KeyError(f"{os}/{architecture}/{variant}")


def build_index(
    images: list[Image],
    *,
    docker: bool = False,
    descriptor_extra: Optional[dict[str, dict[str, Any]]] = None,
) -> Index:
    """An index listing ``images`` in the order given.

    :param descriptor_extra: per manifest digest, fields merged into its descriptor
        (``annotations``, or a ``platform`` that differs from the image's own, as attestations do).
    """
    extra = descriptor_extra or {}
    entries = []
    for image in images:
        desc = image.manifest.descriptor(platform=image.platform)
        desc.update(extra.get(image.digest, {}))
        entries.append(desc)
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST if docker else OCI_INDEX,
        "manifests": entries,
    }
    return Index(Blob(body["mediaType"], canonical_json(body)), tuple(images))


# --------------------------------------------------------------------------------------------
# The test images


def busybox_layer_tar(busybox: Path = Path("/bin/busybox")) -> bytes:
    """A minimal root filesystem around a static busybox: enough to run ``sh -c`` in every engine.

    Debian's ``busybox-static`` has no shared-library dependencies, so the image runs on any
    Linux host of the same architecture without a libc in the image.
    """
    layer = LayerBuilder()
    for d, mode in (
        ("bin", 0o755),
        ("etc", 0o755),
        ("usr/bin", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
    ):
        layer.dir(d, mode)
    layer.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in BUSYBOX_APPLETS:
        layer.symlink(f"bin/{applet}", "busybox")
    layer.symlink("usr/bin/env", "/bin/busybox")
    layer.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    layer.file("etc/group", "root:x:0:\nnogroup:x:65534:\n")
    layer.file("etc/hostname", "busybox\n")
    return layer.tar()


BUSYBOX_CONFIG: dict[str, Any] = {
    "Env": [f"PATH={DEFAULT_PATH}", "UCORE_TEST_IMAGE=busybox"],
    "Cmd": ["sh"],
    "WorkingDir": "/",
    "Labels": {"org.opencontainers.image.title": "ucore test busybox"},
}


def busybox_image(
    compression: str = "gzip", docker: bool = False, busybox: Path = Path("/bin/busybox")
) -> Image:
    """Single-layer busybox image for the host's platform; ``Cmd ["sh"]``."""
    types = DOCKER_LAYER_TYPES if docker else OCI_LAYER_TYPES
    layer = make_layer(busybox_layer_tar(busybox), compression, types)
    return build_image([layer], config=BUSYBOX_CONFIG, docker=docker, history=["ADD busybox /"])


#: What the multi-layer image's root filesystem must look like once unpacked, for unpacker
#: tests: path -> ("file", content, mode) | ("dir", mode) | ("symlink", target) | None (absent).
#: Modes are the ones the image records, before any unprivileged adjustment (safety rule 6).
MULTILAYER_EXPECTED: dict[str, Optional[tuple[Any, ...]]] = {
    "etc/hostname": ("file", b"layer3\n", 0o644),
    "etc/motd": ("file", b"from layer 1\n", 0o644),
    "etc/b-link": ("symlink", "../data/b.txt"),
    "data/a.txt": None,
    "data/b.txt": ("file", b"bee\n", 0o644),
    "data/b-hard": ("file", b"bee\n", 0o644),
    "data/c.txt": ("file", b"sea\n", 0o600),
    "data/setuid": ("file", b"#!/bin/sh\necho setuid\n", 0o4755),
    "data/secret": ("file", b"nobody may read this\n", 0o000),
    "opq": ("dir", 0o755),
    "opq/x": None,
    "opq/y": None,
    "opq/sub": None,
    "opq/z": ("file", b"only z survives\n", 0o644),
    "usr/bin/tool": ("file", b"#!/bin/sh\necho tool\n", 0o755),
    "usr/bin/tool-abs": ("symlink", "/usr/bin/tool"),
    "usr/bin/tool-rel": ("symlink", "tool"),
    "usr/lib/tool.d/hard2": ("file", b"linked twice\n", 0o644),
    "usr/lib/tool.d/hard1": ("file", b"linked twice\n", 0o644),
    "locked": ("dir", 0o000),
    "locked/inside": ("file", b"behind a 0000 directory\n", 0o644),
    "readonly": ("dir", 0o500),
    "readonly/file": ("file", b"behind a 0500 directory\n", 0o444),
    "removed-dir": None,
    "removed-dir/deep/file": None,
    "dangling": ("symlink", "/nonexistent/target"),
}

#: Hardlink pairs in the multi-layer image: both names must end up as the same inode.
MULTILAYER_HARDLINKS = (
    ("data/b-hard", "data/b.txt"),
    ("usr/lib/tool.d/hard2", "usr/lib/tool.d/hard1"),
)


def multilayer_layers() -> list[LayerBuilder]:
    """Three layers that exercise whiteouts, opaque directories, links and odd modes."""
    one = LayerBuilder()
    one.file("etc/hostname", "layer1\n")
    one.file("etc/motd", "from layer 1\n")
    one.file("data/a.txt", "ay\n")
    one.file("data/b.txt", "bee\n")
    one.file("data/setuid", "#!/bin/sh\necho setuid\n", 0o4755)
    one.file("data/secret", "nobody may read this\n", 0o000)
    one.file("opq/x", "x\n").file("opq/y", "y\n").file("opq/sub/deeper", "d\n")
    one.file("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755)
    one.dir("locked", 0o000).file("locked/inside", "behind a 0000 directory\n")
    one.dir("readonly", 0o500).file("readonly/file", "behind a 0500 directory\n", 0o444)
    one.file("removed-dir/deep/file", "gone in layer 3\n")

    two = LayerBuilder()
    two.whiteout("data/a.txt")
    two.opaque("opq").file("opq/z", "only z survives\n")
    two.symlink("usr/bin/tool-abs", "/usr/bin/tool")
    two.symlink("usr/bin/tool-rel", "tool")
    two.symlink("etc/b-link", "../data/b.txt")
    two.file("data/b.txt", "bee\n").hardlink("data/b-hard", "data/b.txt")
    two.file("usr/lib/tool.d/hard1", "linked twice\n")
    two.hardlink("usr/lib/tool.d/hard2", "usr/lib/tool.d/hard1")
    two.symlink("dangling", "/nonexistent/target")

    three = LayerBuilder()
    three.file("etc/hostname", "layer3\n")
    three.file("data/c.txt", "sea\n", 0o600)
    three.whiteout("removed-dir")
    return [one, two, three]


def multilayer_image() -> Image:
    """Layers compressed gzip, zstd and plain, in that order; see :data:`MULTILAYER_EXPECTED`."""
    layers = [
        make_layer(builder.tar(), compression)
        for builder, compression in zip(multilayer_layers(), ("gzip", "zstd", "none"))
    ]
    return build_image(
        layers,
        config={
            "Env": [f"PATH={DEFAULT_PATH}", "LAYERS=3"],
            "Cmd": ["cat", "/etc/hostname"],
            "WorkingDir": "/data",
            "User": "0:0",
        },
        history=["layer one (gzip)", "layer two (zstd)", "layer three (plain tar)"],
    )


PLATFORMS: tuple[tuple[str, str, Optional[str]], ...] = (
    ("linux", "amd64", None),
    ("linux", "arm64", "v8"),
    ("linux", "arm", "v7"),
)


def _platform_layer(os: str, arch: str, variant: Optional[str]) -> Layer:
    """A small layer whose bytes differ per platform, so a test can tell which one was pulled."""
    name = "/".join(p for p in (os, arch, variant) if p)
    return make_layer(LayerBuilder().file("etc/platform", name + "\n").tar(), "gzip")


def attestation_image(subject: Image) -> Image:
    """An attestation manifest the way ``docker buildx`` attaches SBOM/provenance to an index.

    Its config says ``unknown/unknown`` and its one layer is in-toto JSON, not a tarball: a
    client that does not skip it would try to unpack a statement.
    """
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "ucore-test", "digest": {"sha256": subject.digest.split(":")[1]}}],
        "predicate": {"builder": {"id": "ucore.testing.images"}},
    }
    layer_blob = Blob(IN_TOTO, canonical_json(statement))
    layer = Layer(blob=layer_blob, diff_id=layer_blob.digest, compression="none")
    image = build_image([layer], config={}, os="unknown", architecture="unknown")
    manifest = json.loads(image.manifest.data)
    manifest["layers"][0]["annotations"] = {
        "in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"
    }
    return Image(
        manifest=Blob(OCI_MANIFEST, canonical_json(manifest)),
        config=image.config,
        layers=image.layers,
        os="unknown",
        architecture="unknown",
    )


def multiplatform_index(busybox: Optional[Image] = None) -> Index:
    """linux/amd64, linux/arm64/v8 and linux/arm/v7 plus a buildx attestation manifest.

    The host's platform gets the busybox layer under its platform layer, so the image it pulls
    by default can run. The attestation comes first in the index: a client that takes the
    first entry instead of matching platforms picks it and fails loudly.
    """
    host = host_platform()
    bb_layer = (busybox or busybox_image()).layers[0]
    images = []
    for os, arch, variant in PLATFORMS:
        layers = [_platform_layer(os, arch, variant)]
        if (os, arch) == host[:2]:
            layers.insert(0, bb_layer)
        images.append(
            build_image(
                layers,
                config={**BUSYBOX_CONFIG, "Env": [f"PATH={DEFAULT_PATH}", f"PLATFORM={arch}"]},
                os=os,
                architecture=arch,
                variant=variant,
            )
        )
    attestation = attestation_image(images[0])
    return build_index(
        [attestation, *images],
        descriptor_extra={
            attestation.digest: {
                "annotations": {
                    "vnd.docker.reference.digest": images[0].digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                }
            }
        },
    )


def docker_manifest_list(busybox: Optional[Image] = None) -> Index:
    """A Docker manifest list (host platform busybox + one foreign platform), Docker media types
    throughout, as registries still serve for images built with the classic builder."""
    host_image = busybox or busybox_image(docker=True)
    os, arch, variant = (
        ("linux", "arm64", "v8") if host_image.architecture != "arm64" else ("linux", "amd64", None)
    )
    name = "/".join(p for p in ("docker", os, arch, variant) if p)
    layer = make_layer(
        LayerBuilder().file("etc/platform", name + "\n").tar(), "gzip", DOCKER_LAYER_TYPES
    )
    other = build_image(
        [layer],
        config={"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["sh"]},
        os=os,
        architecture=arch,
        variant=variant,
        docker=True,
    )
    return build_index([host_image, other], docker=True)


def schema1_manifest(name: str = "busybox", tag: str = "latest") -> bytes:
    """An (unsigned) Docker schema 1 manifest, for clients that must refuse it clearly."""
    return json.dumps(
        {
            "schemaVersion": 1,
            "name": name,
            "tag": tag,
            "architecture": "amd64",
            "fsLayers": [{"blobSum": "sha256:" + "a" * 64}],
            "history": [{"v1Compatibility": json.dumps({"id": "0" * 64})}],
        },
        indent=3,
    ).encode()


@dataclass(frozen=True)
class TestImages:
    """Every image the integration tests push, built once per session."""

    __test__ = False  # not a pytest test class despite the name

    busybox: Image
    multilayer: Image
    multiplatform: Index
    docker_busybox: Image
    docker_list: Index

    #: repository:tag -> what is pushed there (an Image or an Index).
    def tags(self) -> dict[str, Union[Image, Index]]:
        return {
            "busybox:latest": self.busybox,
            "busybox:1.35": self.busybox,
            "library/busybox:latest": self.busybox,
            "nested/path/busybox:latest": self.busybox,
            "multilayer:latest": self.multilayer,
            "multiplatform:latest": self.multiplatform,
            "dockertypes:single": self.docker_busybox,
            "dockertypes:latest": self.docker_list,
        }


def all_test_images() -> TestImages:
    busybox = busybox_image()
    docker_busybox = busybox_image(docker=True)
    return TestImages(
        busybox=busybox,
        multilayer=multilayer_image(),
        multiplatform=multiplatform_index(busybox),
        docker_busybox=docker_busybox,
        docker_list=docker_manifest_list(docker_busybox),
    )
