"""ucore's unpack of the multi-layer test image, entry for entry against ``umoci unpack
--rootless``: an independent implementation of the OCI layer rules (whiteouts, opaque
directories, hard links, odd modes), run as the same user.

What differs by design, and is normalised here:

* umoci 0.4.7 (Debian 12) reads only gzip and uncompressed layers, so its copy of the image has
  the zstd layer re-compressed with gzip: the same tar bytes, hence the same diff_ids and tree.
* Unprivileged, ucore gives directories owner ``rwx`` and drops set-id bits, recording the
  image's modes in ``<rootfs>.modes.json``; ``umoci --rootless`` writes the image's modes as
  they are (and so leaves a 0000 directory its owner cannot enter until it chmods it). ucore's
  modes are compared after applying its record; as root there is no record and the modes on
  disk must be equal as they are. (umoci keeps the set-id bits of the unprivileged user's own
  files; ucore refuses to leave a set-id program owned by a user on a shared cluster.)
* The root directory is not compared: umoci makes it 0755 with mtime 0 when the layers have no
  ``./`` entry, ucore leaves the directory its caller made.
* Only ``rootfs/`` of umoci's bundle is compared (it adds config.json, umoci.json, an mtree).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ucore.storage import images
from ucore.storage.extract import modes_path, unpack_image
from ucore.storage.store import Store
from ucore.testing import images as ti
from ucore.values.oci import ImageRef

UMOCI = shutil.which("umoci")
pytestmark = pytest.mark.skipif(UMOCI is None, reason="umoci is not installed (Debian: umoci)")


def umoci_copy(image: ti.Image) -> ti.Image:
    """The same layers with zstd re-compressed as gzip, which umoci 0.4.7 can read."""
    import zstandard

    layers = [
        ti.make_layer(zstandard.ZstdDecompressor().decompress(layer.blob.data), "gzip")
        if layer.compression == "zstd"
        else layer
        for layer in image.layers
    ]
    return ti.build_image(layers, config=image.config_json()["config"])


def write_oci_layout(image: ti.Image, root: Path, tag: str) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (*image.blobs, image.manifest):
        (blobs / blob.hex).write_bytes(blob.data)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptor = image.manifest.descriptor(annotations={"org.opencontainers.image.ref.name": tag})
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))


def snapshot(root: Path, recorded: dict[str, int]) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root``: type, mode (the recorded one where there is one), owner,
    mtime and content or link target; plus a ``links`` entry grouping hard-linked names.

    A directory its owner cannot enter is opened up after its mode has been read, as its
    owner may: umoci leaves the image's 0000 directories as they are.
    """
    found: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, list[str]] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        for child in sorted(directory.iterdir()):
            rel = str(child.relative_to(root))
            st = child.lstat()
            mode = recorded.get(rel, stat.S_IMODE(st.st_mode))
            if stat.S_ISDIR(st.st_mode):
                content: Any = None
                if os.geteuid() != 0 and st.st_mode & 0o700 != 0o700:
                    child.chmod(st.st_mode | 0o700)
                pending.append(child)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(child)
            else:
                content = child.read_bytes() if st.st_mode & 0o400 else _read_anyway(child, st)
                inodes.setdefault(st.st_ino, []).append(rel)
            found[rel] = (stat.S_IFMT(st.st_mode), mode, st.st_uid, st.st_gid, st.st_mtime, content)
    found["links"] = tuple(sorted(tuple(sorted(g)) for g in inodes.values() if len(g) > 1))
    return found


def _read_anyway(path: Path, st: os.stat_result) -> bytes:
    """Contents of a file its owner made unreadable (the image's mode 0000 ``data/secret``)."""
    if os.geteuid() == 0:
        return path.read_bytes()
    path.chmod(st.st_mode | 0o400)
    try:
        return path.read_bytes()
    finally:
        path.chmod(stat.S_IMODE(st.st_mode))


def test_ucore_and_umoci_unpack_the_multilayer_image_alike(tmp_path: Path) -> None:
    image = ti.multilayer_image()
    store = Store(tmp_path / "store").ensure()
    for blob in (*image.blobs, image.manifest):
        store.put_bytes(blob.data)
    ref = ImageRef.parse("localhost/multilayer:latest")
    store.set_ref(ref, {"manifest": image.manifest.digest})
    dest = tmp_path / "ucore" / "rootfs"
    dest.mkdir(parents=True)
    unpack_image(store, images.load(store, ref), dest)
    record = json.loads(modes_path(dest).read_text())
    assert record["rootless"] is (os.geteuid() != 0)
    recorded = {path: int(mode, 8) for path, mode in record["modes"].items()}

    layout = tmp_path / "layout"
    write_oci_layout(umoci_copy(image), layout, "latest")
    bundle = tmp_path / "bundle"
    assert UMOCI is not None
    done = subprocess.run(
        [UMOCI, "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr

    ours = snapshot(dest, recorded)
    theirs = snapshot(bundle / "rootfs", {})
    assert sorted(ours) == sorted(theirs)
    for path in ours:
        assert ours[path] == theirs[path], path
    assert ours["links"] == tuple(sorted(tuple(sorted(p)) for p in ti.MULTILAYER_HARDLINKS))
