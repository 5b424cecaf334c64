"""The builtin unpacker on well-formed images: the multi-layer test image unpacks to exactly the
expected tree (as root and unprivileged), whiteouts and opaque directories spare what their own
layer wrote, replacements across and within layers, and the plugin hook."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Optional

import pytest

from ucore.config import Config
from ucore.plugins.hookspecs import hookimpl
from ucore.plugins.loading import get_plugin_manager
from ucore.session import Session
from ucore.storage import images
from ucore.storage.extract import Limits, modes_path, unpack_image
from ucore.storage.store import Store
from ucore.testing import images as ti
from ucore.values.errors import IntegrityError, NotFoundError
from ucore.values.events import Event
from ucore.values.oci import Image, ImageRef

IS_ROOT = os.geteuid() == 0
#: Unpack modes to run each test in: unprivileged always; as root when we are root.
MODES = [pytest.param(True, id="rootless"), pytest.param(False, id="root")]


def store_image(store: Store, image: ti.Image, name: str = "localhost/test/image:latest") -> Image:
    """Publish a test image's blobs and reference; the store's view of it."""
    for blob in (*image.blobs, image.manifest):
        store.put_bytes(blob.data)
    ref = ImageRef.parse(name)
    store.set_ref(ref, {"manifest": image.manifest.digest})
    return images.load(store, ref)


def image_of(*layers: ti.LayerBuilder, compression: str = "gzip") -> ti.Image:
    return ti.build_image([ti.make_layer(layer.tar(), compression) for layer in layers])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store").ensure()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "container" / "rootfs"
    path.mkdir(parents=True)
    return path


def unpack(store: Store, image: ti.Image, dest: Path, rootless: bool = True) -> dict[str, Any]:
    if not rootless and not IS_ROOT:
        pytest.skip("unpacking with ownership and device nodes needs root")
    return unpack_image(store, store_image(store, image), dest, rootless=rootless)


def raw_tar(entries: list[tuple[str, Optional[bytes]]], dir_mode: int = 0o755) -> bytes:
    """A tar with exactly these entries (no parents added): ``None`` data is a directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = ti.EPOCH
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, dir_mode
            else:
                info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def read_as_owner(path: Path) -> bytes:
    """A file's contents even where its mode (0000) keeps its unprivileged owner out."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if IS_ROOT or mode & 0o400:
        return path.read_bytes()
    path.chmod(mode | 0o400)
    try:
        return path.read_bytes()
    finally:
        path.chmod(mode)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- the multi-layer image ------------------------------------------------------------------


@pytest.mark.parametrize("rootless", MODES)
def test_multilayer_image_unpacks_to_exactly_the_expected_tree(
    store: Store, dest: Path, rootless: bool
) -> None:
    stats = unpack(store, ti.multilayer_image(), dest, rootless)
    recorded = {k: int(v, 8) for k, v in json.loads(modes_path(dest).read_text())["modes"].items()}
    present = {path: spec for path, spec in ti.MULTILAYER_EXPECTED.items() if spec is not None}
    for path, spec in ti.MULTILAYER_EXPECTED.items():
        full = dest / path
        if spec is None:
            assert not os.path.lexists(full), path
            continue
        st = full.lstat()
        assert st.st_mtime == ti.EPOCH, path
        kind = spec[0]
        if kind == "symlink":
            assert stat.S_ISLNK(st.st_mode) and os.readlink(full) == spec[1], path
            continue
        mode = recorded.get(path, stat.S_IMODE(st.st_mode))
        assert mode == spec[-1], f"{path}: {mode:o} != {spec[-1]:o}"
        if kind == "dir":
            assert stat.S_ISDIR(st.st_mode), path
        else:
            assert stat.S_ISREG(st.st_mode) and read_as_owner(full) == spec[1], path
        if rootless:
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), path
            if kind == "dir":
                assert st.st_mode & 0o700 == 0o700, path
        else:
            assert (st.st_uid, st.st_gid) == (0, 0)
    for a, b in ti.MULTILAYER_HARDLINKS:
        assert (dest / a).stat().st_ino == (dest / b).stat().st_ino
    assert tree(dest) == {str(a) for p in present for a in (Path(p), *Path(p).parents)} - {"."}
    assert stats["files"] > 0 and stats["bytes"] > 0
    expected_record = {
        "locked": 0o000,
        "readonly": 0o500,
        "data/setuid": 0o4755,
        "data/secret": 0o000,
        "readonly/file": 0o444,
    }
    assert stats["modes"] == (expected_record if rootless else {})
    assert recorded == stats["modes"]


def test_unprivileged_default_is_rootless_unless_root(store: Store, dest: Path) -> None:
    unpack_image(store, store_image(store, ti.multilayer_image()), dest)
    record = json.loads(modes_path(dest).read_text())
    assert record["rootless"] is (not IS_ROOT)
    assert record["version"] == 1


def test_all_compressions_give_the_same_tree(store: Store, tmp_path: Path) -> None:
    layer = ti.LayerBuilder().file("a/b.txt", "hello\n").symlink("a/c", "b.txt").dir("d", 0o750)
    snapshots = []
    for compression in ("gzip", "zstd", "none"):
        dest = tmp_path / compression
        dest.mkdir()
        unpack(store, image_of(layer, compression=compression), dest)
        snapshots.append(
            sorted((str(p.relative_to(dest)), p.lstat().st_mode) for p in dest.rglob("*"))
        )
    assert snapshots[0] == snapshots[1] == snapshots[2]


# --- whiteouts ------------------------------------------------------------------------------


def test_whiteout_deletes_only_what_lower_layers_wrote(store: Store, dest: Path) -> None:
    lower = ti.LayerBuilder().file("keep.txt", "1").file("gone.txt", "2").file("early.txt", "0")
    lower.file("d/lower", "3").file("d/sub/deep", "4")
    upper = ti.LayerBuilder().whiteout("gone.txt")
    upper.file("new.txt", "5").whiteout("new.txt")  # same layer: spared
    upper.whiteout("early.txt").file("early.txt", "6")  # the whiteout first: the file stays
    upper.file("d/mine", "7").whiteout("d")  # the directory keeps what this layer put in it
    upper.whiteout("never-existed")
    unpack(store, image_of(lower, upper), dest)
    assert sorted(tree(dest)) == ["d", "d/mine", "early.txt", "keep.txt", "new.txt"]


def test_opaque_directory_hides_lower_content_only(store: Store, dest: Path) -> None:
    lower = ti.LayerBuilder().file("o/a", "a").file("o/sub/b", "b").file("o/sub/c", "c")
    lower.symlink("o/link", "/etc")
    upper = ti.LayerBuilder().file("o/sub/new", "n").opaque("o").file("o/after", "z")
    unpack(store, image_of(lower, upper), dest)
    assert sorted(tree(dest)) == ["o", "o/after", "o/sub", "o/sub/new"]


def test_opaque_and_whiteout_of_missing_directories_are_no_ops(store: Store, dest: Path) -> None:
    layer = ti.LayerBuilder().file("x", "x")
    upper = ti.LayerBuilder().file("nothere/.wh..wh..opq").file("nothere/deeper/.wh.y")
    unpack(store, image_of(layer, upper), dest)
    assert "x" in tree(dest)


def test_aufs_metadata_entries_are_skipped(store: Store, dest: Path) -> None:
    layer = ti.LayerBuilder().file("a", "a").dir(".wh..wh.plnk").file(".wh..wh.aufs")
    unpack(store, image_of(layer), dest)
    assert tree(dest) == {"a"}


def test_whiteout_then_deep_tree_removal_is_iterative(store: Store, dest: Path) -> None:
    deep = "/".join(["d"] * 1200)  # deeper than Python's recursion limit
    lower = ti.LayerBuilder().file(f"{deep}/leaf", "x")
    upper = ti.LayerBuilder().whiteout("d")
    try:
        unpack(store, image_of(lower, upper), dest)
        assert os.listdir(dest) == []
    finally:  # pytest's own clean-up (shutil.rmtree) recurses and would fail on a leftover
        subprocess.run(["rm", "-rf", str(dest / "d")], check=False)


# --- replacement ----------------------------------------------------------------------------


def test_entries_replace_what_was_there(store: Store, dest: Path) -> None:
    one = ti.LayerBuilder().file("f2d/x", "in a dir").file("d2f", "file")
    one.symlink("l2d", "/nowhere").file("ro", "read only", 0o444)
    two = ti.LayerBuilder().file("f2d", "now a file").file("d2f/y", "now a dir")
    two.dir("l2d").file("l2d/z", "z").file("ro", "replaced", 0o444)
    unpack(store, image_of(one, two), dest)
    assert (dest / "f2d").read_text() == "now a file"
    assert (dest / "d2f" / "y").read_text() == "now a dir"
    assert not (dest / "l2d").is_symlink() and (dest / "l2d" / "z").read_text() == "z"
    assert (dest / "ro").read_text() == "replaced"


def test_a_directory_replaced_by_a_symlink_in_the_same_layer(store: Store, dest: Path) -> None:
    """The resolution cache must notice that ``a`` is no longer the directory it opened."""
    layer = ti.LayerBuilder().file("a/one", "1").dir("b")
    layer.symlink("a", "b").file("a/two", "2")
    unpack(store, image_of(layer), dest)
    assert os.readlink(dest / "a") == "b"
    assert sorted(tree(dest / "b")) == ["two"]


def test_hardlink_to_a_file_of_a_lower_layer(store: Store, dest: Path) -> None:
    one = ti.LayerBuilder().file("bin/tool", "#!/bin/sh\n", 0o755)
    two = ti.LayerBuilder().hardlink("bin/alias", "bin/tool").hardlink("bin/tool", "bin/tool")
    unpack(store, image_of(one, two), dest)
    assert (dest / "bin/alias").stat().st_ino == (dest / "bin/tool").stat().st_ino
    assert stat.S_IMODE((dest / "bin/tool").stat().st_mode) == 0o755


def test_parents_missing_from_the_layer_are_created(store: Store, dest: Path) -> None:
    buf = raw_tar([("x/y/z", b"deep")])
    unpack(store, ti.build_image([ti.make_layer(buf, "none")]), dest)
    assert (dest / "x/y/z").read_bytes() == b"deep"
    assert stat.S_IMODE((dest / "x").stat().st_mode) == 0o755


def test_root_directory_entry_sets_the_root_metadata(store: Store, dest: Path) -> None:
    buf = raw_tar([("./", None), ("./etc/hosts", b"h")], dir_mode=0o751)
    unpack(store, ti.build_image([ti.make_layer(buf, "gzip")]), dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o751
    assert dest.stat().st_mtime == ti.EPOCH


# --- modes and attributes -------------------------------------------------------------------


@pytest.mark.parametrize("rootless", MODES)
def test_set_id_bits_kept_as_root_dropped_and_recorded_unprivileged(
    store: Store, dest: Path, rootless: bool
) -> None:
    one = ti.LayerBuilder().file("su", "x", 0o4755).file("sg", "x", 0o2711).dir("gdir", 0o2775)
    one.file("plain", "x", 0o4755)
    two = ti.LayerBuilder().file("su", "y", 0o4711).file("plain", "y", 0o755)
    stats = unpack(store, image_of(one, two), dest, rootless)
    names = ("su", "sg", "gdir", "plain")
    modes = {n: stat.S_IMODE((dest / n).lstat().st_mode) for n in names}
    if rootless:
        assert modes == {"su": 0o711, "sg": 0o711, "gdir": 0o775, "plain": 0o755}
        assert stats["modes"] == {"su": 0o4711, "sg": 0o2711, "gdir": 0o2775}
    else:
        assert modes == {"su": 0o4711, "sg": 0o2711, "gdir": 0o2775, "plain": 0o755}
        assert stats["modes"] == {}


def test_modes_are_exact_whatever_the_umask(store: Store, dest: Path) -> None:
    layer = ti.LayerBuilder().file("gw", "x", 0o666).dir("open", 0o777).file("open/f", "y", 0o640)
    old = os.umask(0o077)
    try:
        unpack(store, image_of(layer), dest)
    finally:
        os.umask(old)
    assert stat.S_IMODE((dest / "gw").stat().st_mode) == 0o666
    assert stat.S_IMODE((dest / "open").stat().st_mode) == 0o777
    assert stat.S_IMODE((dest / "open/f").stat().st_mode) == 0o640


def test_locked_directories_are_filled_and_stay_removable(store: Store, dest: Path) -> None:
    one = ti.LayerBuilder().dir("locked", 0o000).file("locked/a", "a").dir("ro", 0o500)
    one.file("ro/b", "b", 0o400).dir("ro/sub", 0o000).file("ro/sub/c", "c")
    two = ti.LayerBuilder().dir("locked", 0o000).file("locked/later", "l").whiteout("ro/b")
    two.dir("ro", 0o500).dir("ro/sub", 0o000).file("ro/sub/d", "d")
    stats = unpack(store, image_of(one, two), dest)
    assert sorted(tree(dest)) == [
        "locked", "locked/a", "locked/later", "ro", "ro/sub", "ro/sub/c", "ro/sub/d"
    ]  # fmt: skip
    assert stats["modes"] == {"locked": 0, "ro": 0o500, "ro/sub": 0}
    for d in ("locked", "ro", "ro/sub"):
        assert stat.S_IMODE((dest / d).stat().st_mode) & 0o700 == 0o700


def _user_xattrs_supported(path: Path) -> bool:
    probe = path / "probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


def test_user_xattrs_applied_privileged_ones_ignored_unprivileged(store: Store, dest: Path) -> None:
    if not _user_xattrs_supported(dest):
        pytest.skip("this filesystem has no user extended attributes")
    builder = ti.LayerBuilder().file("f", "x")
    raw = builder.tar()
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(raw)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info in src.getmembers():
            info.pax_headers = {
                "SCHILY.xattr.user.origin": "ucore",
                "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
            }
            tar.addfile(info, src.extractfile(info))
    unpack(store, ti.build_image([ti.make_layer(out.getvalue(), "gzip")]), dest)
    assert os.getxattr(dest / "f", "user.origin") == b"ucore"
    assert "security.capability" not in os.listxattr(dest / "f")


# --- errors and limits ----------------------------------------------------------------------


def test_diff_id_count_must_match_the_layers(store: Store, dest: Path) -> None:
    image = image_of(ti.LayerBuilder().file("a"))
    config = image.config_json()
    config["rootfs"]["diff_ids"].append(config["rootfs"]["diff_ids"][0])
    config_blob = ti.Blob(ti.OCI_CONFIG, ti.canonical_json(config))
    manifest = json.loads(image.manifest.data)
    manifest["config"] = config_blob.descriptor()
    bad = ti.Image(
        manifest=ti.Blob(ti.OCI_MANIFEST, ti.canonical_json(manifest)),
        config=config_blob,
        layers=image.layers,
        os=image.os,
        architecture=image.architecture,
    )
    with pytest.raises(IntegrityError, match="2 diff_ids for 1 layers"):
        unpack(store, bad, dest)


def test_missing_layer_blob_is_not_found(store: Store, dest: Path) -> None:
    image = image_of(ti.LayerBuilder().file("a"))
    stored = store_image(store, image)
    store.remove_blob(stored.layers[0].digest)
    with pytest.raises(NotFoundError, match="missing from the store"):
        unpack_image(store, stored, dest)


def test_destination_must_be_empty(store: Store, dest: Path) -> None:
    (dest / "stray").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        unpack(store, image_of(ti.LayerBuilder().file("a")), dest)


def test_default_limits() -> None:
    assert Limits() == Limits(max_bytes=64 << 30, max_members=10_000_000, max_header=1 << 20)


# --- the plugin -----------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def ucore_event(self, event: Event) -> None:
        self.events.append(event)


def test_builtin_plugin_unpacks_and_reports_each_layer(store: Store, dest: Path) -> None:
    plugins = get_plugin_manager(entry_points=False)
    assert "unpack" in dict(plugins.pm.list_name_plugin())
    recorder = _Recorder()
    plugins.pm.register(recorder, name="recorder")
    session = Session(Config(dir=store.root), plugins)
    image = store_image(store, ti.multilayer_image())
    assert session.hook.ucore_unpack(image=image, dest=dest, session=session) == dest
    assert (dest / "etc/hostname").read_text() == "layer3\n"
    stages = [e for e in recorder.events if getattr(e, "stage", None) == "unpack.layer"]
    assert len(stages) == 2 * len(image.layers)
    assert all(getattr(e, "ok", True) for e in stages)
