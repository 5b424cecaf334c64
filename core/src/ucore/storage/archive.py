"""``load`` and ``save``: docker-save tarballs and OCI image layouts, to and from the store.

Loading reads the tarball once, as a stream (stdin works): every member is hashed into the
store as it passes (one member at a time in memory at most), and only once the whole archive
is read are manifests interpreted, read back from the store. Member names are only keys;
nothing is written by name, so a hostile archive cannot write outside the store. Blobs the
archive brought but no loaded image references are removed again.

Saving writes what ``docker load`` and ``skopeo`` accept: Docker 25's layout, which is both a
docker-save archive (``manifest.json``) and an OCI image layout (``index.json``), with
uncompressed layers whose digests are verified against the config's ``diff_ids``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import tarfile
import time
from typing import IO, Any, Optional

from ucore.storage import images
from ucore.storage import manifest as mf
from ucore.storage.extract import open_stream
from ucore.storage.layers import compression, open_decompressed
from ucore.storage.store import Store
from ucore.storage.stream import BadLayer
from ucore.values.errors import IntegrityError, UsageError, store_error
from ucore.values.oci import Descriptor, Digest, Image, ImageRef

MAX_MEMBERS = 100_000
MAX_SMALL = 16 << 20
_SMALL_NAMES = ("manifest.json", "index.json", "oci-layout", "repositories")
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


class _Contents:
    """What was read from the archive: blob digests by member name. Even small files are read
    back from the store when needed rather than kept: an archive can hold thousands."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.blobs: dict[str, tuple[Digest, int]] = {}
        self.links: dict[str, str] = {}
        self.new: set[Digest] = set()

    def resolve(self, name: str) -> str:
        for _ in range(40):
            if name not in self.links:
                return name
            name = self.links[name]
        raise IntegrityError(f"archive member {name!r}: too many symbolic links")

    def blob(self, name: str) -> tuple[Digest, int]:
        key = self.resolve(posixpath.normpath(name.lstrip("/")))
        if key not in self.blobs:
            raise IntegrityError(f"archive refers to {name!r}, which it does not contain")
        return self.blobs[key]

    def text(self, name: str) -> Optional[bytes]:
        found = self.blobs.get(self.resolve(posixpath.normpath(name.lstrip("/"))))
        return self.store.read_blob(found[0], MAX_SMALL) if found else None


def _read(store: Store, stream: IO[bytes], contents: _Contents) -> None:
    try:
        tar = open_stream(stream, mode="r|*")
    except (tarfile.TarError, BadLayer) as exc:
        raise IntegrityError(f"not a tar archive: {exc}") from None
    count = 0
    try:
        for member in tar:
            count += 1
            if count > MAX_MEMBERS:
                raise IntegrityError(f"archive has more than {MAX_MEMBERS} members")
            name = posixpath.normpath(member.name.lstrip("/"))
            if member.issym() or member.islnk():
                target = member.linkname
                if member.issym():
                    target = posixpath.join(posixpath.dirname(name), target)
                contents.links[name] = posixpath.normpath(target.lstrip("/"))
                continue
            if not member.isfile():
                continue
            fileobj = tar.extractfile(member)
            assert fileobj is not None
            small = member.size <= MAX_SMALL and (
                name in _SMALL_NAMES or name.endswith(".json") or member.size <= 64 << 10
            )
            if small:
                data = fileobj.read()
                digest = Digest(hashlib.sha256(data).hexdigest())
                if not store.has_blob(digest):
                    store.put_bytes(data)
                    contents.new.add(digest)
                contents.blobs[name] = (digest, len(data))
                continue
            writer = store.writer(None, member.size).open()
            try:
                while chunk := fileobj.read(1 << 20):
                    writer.write(chunk)
            except BaseException:
                writer.discard()
                raise
            existed = store.has_blob(Digest(writer.hasher.hexdigest()))
            digest = writer.publish()
            if not existed:
                contents.new.add(digest)
            contents.blobs[name] = (digest, member.size)
    except (tarfile.TarError, BadLayer, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise store_error(exc, "loading the archive") from exc
        raise IntegrityError(f"corrupt or truncated archive: {exc}") from None


def _json(data: Optional[bytes], what: str) -> Any:
    if data is None:
        raise IntegrityError(f"archive has no {what}")
    return mf.load_json(data, f"archive's {what}")


def _oci_images(store: Store, contents: _Contents) -> list[tuple[ImageRef, Digest]]:
    index = _json(contents.text("index.json"), "index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise IntegrityError("archive's index.json has no manifests")
    out: list[tuple[ImageRef, Digest]] = []
    for entry in index["manifests"]:
        desc = Descriptor.from_json(entry, mf.MAX_MANIFEST)
        manifest_digest = _platform_manifest(store, contents, desc)
        # containerd and Docker put the full name here; plain OCI layouts often only a tag.
        name = desc.annotations.get("io.containerd.image.name") or desc.annotations.get(
            "org.opencontainers.image.ref.name", ""
        )
        if "/" not in name and ":" not in name:
            raise UsageError("the archive does not name its image: give one with --tag NAME")
        out.append((ImageRef.parse(name), manifest_digest))
    return out


def _platform_manifest(
    store: Store, contents: _Contents, desc: Descriptor, in_index: bool = False
) -> Digest:
    """The manifest ``desc`` names, or this host's one when it names an image index. An index
    in an index is refused, as pulls refuse it: a chain of them a thousand deep (each entry
    claiming to be a manifest) ran into the recursion limit, reported as invalid JSON."""
    digest, _size = contents.blob(f"blobs/sha256/{desc.digest.hex}")
    if digest != desc.digest:
        raise IntegrityError(f"archive blob {desc.digest} does not match its name")
    doc = mf.parse(store.read_blob(digest, mf.MAX_MANIFEST))
    if isinstance(doc, mf.Index):
        from ucore.values.oci import Platform

        if in_index:
            raise IntegrityError("archive: nested image indexes are not supported")
        chosen = doc.select(Platform.host())
        return _platform_manifest(store, contents, chosen, in_index=True)
    for blob in (doc.config, *doc.layers):
        found, _ = contents.blob(f"blobs/sha256/{blob.digest.hex}")
        if found != blob.digest:
            raise IntegrityError(f"archive blob {blob.digest} does not match its name")
    return digest


def _docker_images(store: Store, contents: _Contents) -> list[tuple[ImageRef, Digest]]:
    entries = _json(contents.text("manifest.json"), "manifest.json")
    if not isinstance(entries, list):
        raise IntegrityError("archive's manifest.json is not a list")
    out: list[tuple[ImageRef, Digest]] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise IntegrityError("archive's manifest.json has an entry without Config")
        config_digest, config_size = contents.blob(entry["Config"])
        config = mf.parse_config(store.read_blob(config_digest, mf.MAX_CONFIG))
        diff_ids = mf.config_diff_ids(config)
        layer_names = entry.get("Layers") or []
        if not isinstance(layer_names, list) or len(layer_names) != len(diff_ids):
            raise IntegrityError("archive's layer list does not match the image config")
        layers = []
        for name, diff_id in zip(layer_names, diff_ids):
            digest, size = contents.blob(str(name))
            with open(store.blob_path(digest), "rb") as f:
                kind = compression(f.read(4))
            if kind == "none" and digest != diff_id:
                raise IntegrityError(f"layer {name} does not match diff_id {diff_id}")
            layers.append({"mediaType": LAYER_TYPES[kind], "digest": str(digest), "size": size})
        manifest_digest = store.put_bytes(mf.write_manifest(config_digest, config_size, layers))
        contents.new.add(manifest_digest)
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise IntegrityError("archive's manifest.json has RepoTags that are not names")
        if not tags:
            raise UsageError("the archive does not name its image: give one with --tag NAME")
        out.extend((ImageRef.parse(tag), manifest_digest) for tag in tags)
    return out


def load(store: Store, stream: IO[bytes], tag: Optional[str] = None) -> list[ImageRef]:
    """Load every image in a docker-save or OCI-layout tarball; returns the names stored.

    Whatever happens, blobs the archive brought that no image references are removed again,
    so a refused archive leaves the store as it was. What a killed load left in ``tmp/`` goes
    first (see :func:`ucore.storage.rootfs_archive.store_layer`).
    """
    store.ensure().cleanup_tmp()
    contents = _Contents(store)
    with store.shared_lock("gc"):
        try:
            _read(store, stream, contents)
            return _store_refs(store, contents, tag)
        finally:
            images.drop_unused(store, contents.new)


def _store_refs(store: Store, contents: _Contents, tag: Optional[str]) -> list[ImageRef]:
    try:
        if contents.text("index.json") is not None and contents.text("oci-layout"):
            found = _oci_images(store, contents)
        else:
            found = _docker_images(store, contents)
    except UsageError:
        if tag is None:
            raise
        found = []
    if tag is not None:
        digests = {d for _r, d in found} or _sole_manifest(store, contents)
        if len(digests) != 1:
            raise UsageError("--tag needs an archive that holds exactly one image")
        found = [(ImageRef.parse(tag), digests.pop())]
    if not found:
        raise IntegrityError("the archive holds no image")
    loaded = []
    for ref, manifest_digest in found:
        record = {
            "manifest": str(manifest_digest),
            "index": None,
            "platform": _platform_of(store, manifest_digest),
            "pulled": time.time(),
        }
        store.set_ref(ref, record)
        loaded.append(ref)
    return loaded


def _sole_manifest(store: Store, contents: _Contents) -> set[Digest]:
    if contents.text("index.json") is None:
        return set()
    index = _json(contents.text("index.json"), "index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or len(entries) != 1:
        return set()
    return {_platform_manifest(store, contents, Descriptor.from_json(entries[0], mf.MAX_MANIFEST))}


def _platform_of(store: Store, manifest_digest: Digest) -> Optional[str]:
    doc = mf.parse(store.read_blob(manifest_digest, mf.MAX_MANIFEST))
    if not isinstance(doc, mf.Manifest):
        return None
    platform = mf.config_platform(
        mf.parse_config(store.read_blob(doc.config.digest, mf.MAX_CONFIG))
    )
    return str(platform) if platform else None


# --- save -----------------------------------------------------------------------------------


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _add_layer(tar: tarfile.TarFile, store: Store, layer: Descriptor, diff_id: str) -> int:
    """Decompress a layer into a temporary file (tar needs the size first), check it against
    the config's diff_id, then append it. Returns its uncompressed size."""
    tmp = store.tmp / f"save-{os.urandom(8).hex()}.{os.getpid()}.tmp"
    hasher = hashlib.sha256()
    try:
        with open(store.blob_path(layer.digest), "rb") as raw, open(tmp, "w+b") as out:
            reader = open_decompressed(raw)
            while chunk := reader.read(1 << 20):
                hasher.update(chunk)
                out.write(chunk)
            size = out.tell()
            digest = f"sha256:{hasher.hexdigest()}"
            if digest != diff_id:
                raise IntegrityError(f"layer {layer.digest} does not match diff_id {diff_id}")
            out.seek(0)
            info = tarfile.TarInfo(f"blobs/sha256/{hasher.hexdigest()}")
            info.size = size
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, out)
    except OSError as exc:
        raise store_error(exc, f"saving layer {layer.digest}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return size


def save(store: Store, refs: list[ImageRef], out: IO[bytes]) -> None:
    loaded: list[Image] = [images.load(store, ref) for ref in refs]
    written: set[str] = set()
    layer_sizes: dict[str, int] = {}
    index_entries = []
    docker_entries = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for image in loaded:
            config_raw = store.read_blob(image.config_digest, mf.MAX_CONFIG)
            config = mf.parse_config(config_raw)
            diff_ids = mf.config_diff_ids(config)
            if len(diff_ids) != len(image.layers):
                raise IntegrityError(f"{image.ref.familiar}: config and manifest disagree")
            if image.config_digest.hex not in written:
                _add_bytes(tar, f"blobs/sha256/{image.config_digest.hex}", config_raw)
                written.add(image.config_digest.hex)
            layers: list[dict[str, Any]] = []
            for layer, raw_diff_id in zip(image.layers, diff_ids):
                diff_id = str(raw_diff_id)
                if diff_id not in layer_sizes:
                    layer_sizes[diff_id] = _add_layer(tar, store, layer, diff_id)
                layers.append(
                    {
                        "mediaType": LAYER_TYPES["none"],
                        "digest": diff_id,
                        "size": layer_sizes[diff_id],
                    }
                )
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": mf.OCI_MANIFEST,
                    "config": {
                        "mediaType": mf.OCI_CONFIG,
                        "digest": str(image.config_digest),
                        "size": len(config_raw),
                    },
                    "layers": layers,
                },
                separators=(",", ":"),
            ).encode()
            manifest_hex = hashlib.sha256(manifest).hexdigest()
            _add_bytes(tar, f"blobs/sha256/{manifest_hex}", manifest)
            name = str(image.ref).split("@")[0]
            index_entries.append(
                {
                    "mediaType": mf.OCI_MANIFEST,
                    "digest": f"sha256:{manifest_hex}",
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": image.ref.tag or "latest",
                    },
                }
            )
            docker_entries.append(
                {
                    "Config": f"blobs/sha256/{image.config_digest.hex}",
                    "RepoTags": [image.ref.familiar.split("@")[0]],
                    "Layers": [f"blobs/sha256/{str(d['digest'])[7:]}" for d in layers],
                }
            )
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(
            tar,
            "index.json",
            json.dumps(
                {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": index_entries}
            ).encode(),
        )
        _add_bytes(tar, "manifest.json", json.dumps(docker_entries).encode())
