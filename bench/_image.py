"""Bench fixtures shared by the scenarios: a big realistic image, a local registry holding it.

Pull speed depends on what is pulled: many small layers, one huge layer, or random bytes all
behave differently. The image here is made to look like a real one: about ten gzip layers of
unequal size, filled with the host's own files (libraries, data, programs), so they compress as
real image layers do. It is built once, as an OCI image layout under ``bench/.cache`` (which git
ignores), and pushed with skopeo into a registry whose storage also lives there, so later runs
only start the registry.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

import requests

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"

# Host directories whose files fill the layers, in this order: real binaries, libraries and data
# compress like the content of real images (random data would not compress, text too well).
SOURCE_DIRS = (
    "/usr/lib",
    "/usr/share",
    "/usr/bin",
    "/usr/sbin",
    "/usr/libexec",
    "/usr/include",
    "/usr/local",
    "/opt",
)
# Files above this size are left out, and so are large files that would overshoot what is left
# of a layer's share (so that layer sizes stay near their targets).
MAX_FILE_BYTES = 32 * 1024 * 1024
# Docker and containerd write layers with Go's default gzip level, which is 6 (Python's is 9).
GZIP_LEVEL = 6
# Two path components: udocker prefixes a one-component name with "library/" whatever the
# registry, which would make it ask a different repository than the other tools.
REPOSITORY = "bench/big"
# The image's name inside the OCI layout (``oci:LAYOUT:big``).
LAYOUT_REF = "big"

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# What the registry manifest request accepts: both the OCI and the Docker v2 schema 2 forms.
MANIFEST_ACCEPT = ", ".join(
    (
        MEDIA_MANIFEST,
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


@dataclass(frozen=True)
class Blob:
    """A blob as the registry serves it: the digest names it, the size checks downloads."""

    digest: str
    size: int


@dataclass(frozen=True)
class BigImage:
    """The built image: where its OCI layout is, its registry tag and its blobs."""

    layout: Path
    tag: str
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def reference(self) -> str:
        """``bench/big:TAG``, the image name without the registry part."""
        return f"{REPOSITORY}:{self.tag}"

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Config and layers: every blob a pull must download."""
        return (self.config, *self.layers)

    @property
    def compressed_bytes(self) -> int:
        return sum(blob.size for blob in self.blobs)


def layer_shares(count: int) -> list[float]:
    """Fractions of the total size per layer, falling linearly from 3 to 1 (first is largest).

    Real images have a big base layer and smaller ones on top; equal layers would flatter
    tools that download layers in parallel.
    """
    if count == 1:
        return [1.0]
    weights = [3.0 - 2.0 * index / (count - 1) for index in range(count)]
    total = sum(weights)
    return [weight / total for weight in weights]


def image_tag(layers: int, size_mb: int) -> str:
    """``latest`` for the default image; other shapes get their own tag in the same registry."""
    return "latest" if (layers, size_mb) == (10, 500) else f"l{layers}-{size_mb}mb"


class _HashingWriter:
    """Passes writes on while hashing and counting them (a digest without a second read)."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.count += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()

    def tell(self) -> int:
        return self.count

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def _walk_sources(sources: tuple[str, ...]) -> Iterator[str]:
    """Every directory, regular file and symlink under the sources, depth first, sorted."""
    for top in sources:
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for root, dirs, files in os.walk(top):
            dirs.sort()
            yield root
            for name in dirs:
                path = os.path.join(root, name)
                if os.path.islink(path):
                    yield path
            for name in sorted(files):
                yield os.path.join(root, name)


class _LayerWriter:
    """One gzip layer being written: the tar stream, its diff_id and the compressed digest."""

    def __init__(self, blobs_dir: Path, index: int) -> None:
        self.temp = blobs_dir / f".layer-{index}.tmp"
        self.raw = open(self.temp, "wb")  # noqa: SIM115
        self.compressed = _HashingWriter(self.raw)
        self.gzip = gzip.GzipFile(
            fileobj=self.compressed,
            mode="wb",
            compresslevel=GZIP_LEVEL,
            mtime=0,
        )
        self.plain = _HashingWriter(self.gzip)
        self.tar = tarfile.open(  # noqa: SIM115 (closed in finish)
            fileobj=self.plain, mode="w", format=tarfile.PAX_FORMAT
        )
        self.dirs: set[str] = set()
        self.first: Optional[str] = None
        self.last: Optional[str] = None

    def _add(self, path: str) -> None:
        arcname = path.lstrip("/")
        info = self.tar.gettarinfo(path, arcname)
        if info is None:  # sockets and other types a tar cannot hold
            return
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if info.isreg():
            with open(path, "rb") as handle:
                self.tar.addfile(info, handle)
        else:
            self.tar.addfile(info)
        if info.isdir():
            self.dirs.add(arcname)

    def add(self, path: str) -> None:
        """Adds a host path, preceded by its parent directories if this layer lacks them."""
        parents = []
        parent = os.path.dirname(path)
        while parent not in ("/", "") and parent.lstrip("/") not in self.dirs:
            parents.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(parents):
            self._add(directory)
        self._add(path)
        self.first = self.first or path
        self.last = path

    def add_random(self, name: str, size: int) -> None:
        """Incompressible filler, used only when the host has too few files to reach the size."""
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = int(time.time())
        chunk = 1024 * 1024

        class _Random:
            def __init__(self) -> None:
                self.left = size

            def read(self, count: int = chunk) -> bytes:
                count = min(count, self.left)
                self.left -= count
                return os.urandom(count)

        self.tar.addfile(info, _Random())

    def finish(self) -> tuple[Blob, str]:
        """Closes the streams and names the file by its digest; returns (blob, diff_id)."""
        self.tar.close()
        self.gzip.close()
        self.raw.close()
        blob = Blob(self.compressed.digest, self.compressed.count)
        self.temp.rename(self.temp.parent / blob.digest.split(":", 1)[1])
        return blob, self.plain.digest


def _write_blob(blobs_dir: Path, data: bytes) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    (blobs_dir / digest).write_bytes(data)
    return Blob(f"sha256:{digest}", len(data))


def _goarch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}.get(
        machine, machine
    )


def build_layout(layout: Path, layers: int, size_mb: int, log: Any = print) -> None:
    """Writes the OCI image layout: gzip layers of host files, config with diff_ids, index.

    Each layer takes files in walk order until its compressed size reaches its share of
    ``size_mb``; the compressed size is known while writing, so one pass is enough.
    """
    if layout.exists():
        shutil.rmtree(layout)
    blobs_dir = layout / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True)
    target_total = size_mb * 1000 * 1000
    sources = _walk_sources(SOURCE_DIRS)
    layer_blobs: list[Blob] = []
    diff_ids: list[str] = []
    history: list[dict[str, Any]] = []
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    started = time.monotonic()
    for index, share in enumerate(layer_shares(layers)):
        writer = _LayerWriter(blobs_dir, index)
        target = int(target_total * share)
        for path in sources:
            try:
                if os.path.isfile(path) and not os.path.islink(path):
                    size = os.path.getsize(path)
                    left = target - writer.compressed.count
                    if size > MAX_FILE_BYTES or (size > 1_000_000 and size > 3 * left):
                        continue
                writer.add(path)
            except OSError:  # vanished or unreadable host file: not worth failing the build
                continue
            if writer.compressed.count >= target:
                break
        else:
            left = target - writer.compressed.count
            if left > 0:
                writer.add_random(f"opt/filler/layer-{index}.bin", left)
        blob, diff_id = writer.finish()
        layer_blobs.append(blob)
        diff_ids.append(diff_id)
        span = f"{writer.first} .. {writer.last}" if writer.first else "random filler"
        history.append({"created": created, "created_by": f"bench layer {index}: {span}"})
        log(
            f"  layer {index + 1}/{layers}: {blob.size / 1e6:6.1f} MB gzip,"
            f" {writer.plain.count / 1e6:7.1f} MB tar ({span})"
        )
    config = {
        "created": created,
        "architecture": _goarch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    config_blob = _write_blob(blobs_dir, json.dumps(config, indent=1).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": config_blob.digest,
            "size": config_blob.size,
        },
        "layers": [
            {"mediaType": MEDIA_LAYER, "digest": blob.digest, "size": blob.size}
            for blob in layer_blobs
        ],
    }
    manifest_blob = _write_blob(blobs_dir, json.dumps(manifest, indent=1).encode())
    index_json = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_blob.digest,
                "size": manifest_blob.size,
                "annotations": {"org.opencontainers.image.ref.name": LAYOUT_REF},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index_json, indent=1))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    total = sum(blob.size for blob in layer_blobs)
    log(f"  built {layers} layers, {total / 1e6:.1f} MB gzip in {time.monotonic() - started:.0f} s")


def read_layout(layout: Path, tag: str) -> Optional[BigImage]:
    """The image described by an existing layout, or None if it is missing or incomplete."""
    try:
        index = json.loads((layout / "index.json").read_text())
        digest = index["manifests"][0]["digest"]
        blobs_dir = layout / "blobs" / "sha256"
        manifest = json.loads((blobs_dir / digest.split(":", 1)[1]).read_text())
        config = Blob(manifest["config"]["digest"], manifest["config"]["size"])
        layers = tuple(Blob(entry["digest"], entry["size"]) for entry in manifest["layers"])
        for blob in (config, *layers):
            if (blobs_dir / blob.digest.split(":", 1)[1]).stat().st_size != blob.size:
                return None
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return BigImage(layout, tag, config, layers)


def ensure_image(layers: int, size_mb: int, rebuild: bool = False, log: Any = print) -> BigImage:
    """The cached image of this shape, built first if missing (or if ``rebuild``)."""
    tag = image_tag(layers, size_mb)
    layout = CACHE_DIR / "images" / tag
    image = None if rebuild else read_layout(layout, tag)
    if image is None:
        log(f"building the {size_mb} MB, {layers}-layer image in {layout} (once; cached)")
        build_layout(layout, layers, size_mb, log)
        image = read_layout(layout, tag)
        if image is None:
            raise RuntimeError(f"the image layout just built in {layout} is unreadable")
    return image


def start_registry(log: Any = print) -> Any:
    """Starts the test registry (``ucore.testing.registry``) on the storage under the cache.

    The core may not be installed; its source tree is importable all the same.
    """
    try:
        from ucore.testing.registry import RegistryServer
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT / "core" / "src"))
        from ucore.testing.registry import RegistryServer
    workdir = CACHE_DIR / "registry"
    # Each start writes a config and a log named by its port; earlier runs' are of no more use.
    for stale in [*workdir.glob("config-*.yml"), *workdir.glob("registry-*.log")]:
        stale.unlink()
    server = RegistryServer(workdir, storage=workdir / "storage")
    server.start()
    log(f"registry {server.url} (storage {server.storage})")
    return server


def registry_manifest(url: str, reference: str) -> Optional[dict[str, Any]]:
    """The manifest the registry serves for ``name:tag``, or None when it has none."""
    name, tag = reference.rsplit(":", 1)
    response = requests.get(
        f"{url}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    manifest: dict[str, Any] = response.json()
    return manifest


def ensure_pushed(image: BigImage, address: str, url: str, log: Any = print) -> None:
    """Pushes the layout with skopeo unless the registry already holds these very blobs."""
    manifest = registry_manifest(url, image.reference)
    if manifest is not None:
        served = [layer["digest"] for layer in manifest.get("layers", [])]
        if served == [blob.digest for blob in image.layers]:
            return
    log(f"pushing {image.reference} to {address} with skopeo (once; the registry keeps it)")
    started = time.monotonic()
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{image.layout}:{LAYOUT_REF}",
            f"docker://{address}/{image.reference}",
        ],
        check=True,
    )
    log(f"  pushed in {time.monotonic() - started:.0f} s")
