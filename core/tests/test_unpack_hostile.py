"""Hostile layers (safety rules 1 to 8): every test keeps a sentinel directory beside the
container and checks that nothing outside the container changed, whatever the layer tried, and
that a refusal is one clear line naming the layer and the entry."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import pytest

from ucore.storage import extract as extract_module
from ucore.storage import images
from ucore.storage.extract import Limits, unpack_image
from ucore.storage.store import Store
from ucore.testing import images as ti
from ucore.values.errors import IntegrityError
from ucore.values.oci import Digest, ImageRef

IS_ROOT = os.geteuid() == 0
MODES = [pytest.param(True, id="rootless"), pytest.param(False, id="root")]
Member = tuple[tarfile.TarInfo, Optional[bytes]]


# --- building raw layers --------------------------------------------------------------------


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    link: str = "",
    pax: Optional[dict[str, str]] = None,
) -> Member:
    """One tar entry exactly as given: no parents added, no name cleaned."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, ti.EPOCH, link
    if pax:
        info.pax_headers = pax
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = len(data)
        return info, data
    return info, None


def symlink(name: str, target: str) -> Member:
    return entry(name, tarfile.SYMTYPE, mode=0o777, link=target)


def hardlink(name: str, target: str, mode: int = 0o644) -> Member:
    return entry(name, tarfile.LNKTYPE, mode=mode, link=target)


def device(name: str, kind: bytes, major: int, minor: int, mode: int = 0o666) -> Member:
    info, _ = entry(name, kind, mode=mode)
    info.devmajor, info.devminor = major, minor
    return info, None


def sparse(name: str, size: int) -> Member:
    """A GNU sparse file (PAX format 1.0) of ``size`` bytes, a hole but for its last 512 bytes:
    1 KiB in the tar, whatever ``size`` is."""
    sparse_map = f"1\n{size - 512}\n512\n".encode().ljust(512, b"\0")
    pax = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(size),
    }
    return entry(f"GNUSparseFile.0/{name}", data=sparse_map + b"s" * 512, pax=pax)


def tar_of(*members: Member) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


Layer = Union[bytes, ti.Layer]


def image_of(*layers: Layer, compression: str = "gzip") -> ti.Image:
    """An image of raw tars (compressed as asked) or of ready-made (possibly lying) layers."""
    return ti.build_image(
        [
            layer if isinstance(layer, ti.Layer) else ti.make_layer(layer, compression)
            for layer in layers
        ]
    )


# --- the world around the container ---------------------------------------------------------


@dataclass
class World:
    """A container root three levels below a directory that also holds a sentinel: a name
    with ``../../..`` from the root, followed by the kernel, would reach the sentinel."""

    tmp: Path
    store: Store
    dest: Path
    sentinel: Path

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        skip = {self.store.root, self.dest, self.dest.with_name("rootfs.modes.json")}
        found: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.tmp):
            here = Path(dirpath)
            dirnames[:] = [n for n in dirnames if here / n not in skip]
            for name in dirnames + filenames:
                path = here / name
                if path in skip or path == self.dest.parent:  # the modes file is made there
                    continue
                st = path.lstat()
                content: Union[bytes, str, None] = None
                if stat.S_ISREG(st.st_mode):
                    content = path.read_bytes()
                elif stat.S_ISLNK(st.st_mode):
                    content = os.readlink(path)
                found[str(path.relative_to(self.tmp))] = (
                    st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_mtime_ns, content
                )  # fmt: skip
        return found

    def inside(self, host_path: Path) -> Path:
        """Where a host path named by an absolute symlink lands inside the container."""
        return self.dest / str(host_path).lstrip("/")

    def unpack(
        self, image: ti.Image, *, limits: Optional[Limits] = None, rootless: bool = True
    ) -> dict[str, Any]:
        """Unpack, then check that nothing outside the container changed, even on error."""
        if not rootless and not IS_ROOT:
            pytest.skip("unpacking with ownership and device nodes needs root")
        for blob in (*image.blobs, image.manifest):
            self.store.put_bytes(blob.data)
        ref = ImageRef.parse("localhost/hostile:latest")
        self.store.set_ref(ref, {"manifest": image.manifest.digest})
        stored = images.load(self.store, ref)
        before = self.snapshot()
        try:
            return unpack_image(self.store, stored, self.dest, limits=limits, rootless=rootless)
        finally:
            assert self.snapshot() == before, "something outside the container changed"
            assert (self.sentinel / "keep").read_text() == "precious\n"

    def refuses(
        self, image: ti.Image, match: str, *, layer: int = 0, limits: Optional[Limits] = None
    ) -> str:
        """The unpack fails with one line naming the layer and matching ``match``."""
        with pytest.raises(IntegrityError) as err:
            self.unpack(image, limits=limits)
        message = str(err.value)
        assert "\n" not in message
        assert f"layer {image.layers[layer].blob.hex[:12]}" in message
        assert match in message, message
        return message


@pytest.fixture
def world(tmp_path: Path) -> World:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("precious\n")
    dest = tmp_path / "containers" / "c1" / "rootfs"
    dest.mkdir(parents=True)
    return World(tmp_path, Store(tmp_path / "store").ensure(), dest, sentinel)


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "./../escape", "/../escape"])
def test_names_climbing_out_are_refused(world: World, name: str) -> None:
    message = world.refuses(image_of(tar_of(entry(name, data=b"x"))), "climbs out of the root")
    assert repr(name) in message


def test_absolute_names_are_taken_relative_to_the_root(world: World) -> None:
    pwned = world.sentinel / "pwned"
    world.unpack(image_of(tar_of(entry("/etc/abs", data=b"a"), entry(str(pwned), data=b"p"))))
    assert (world.dest / "etc/abs").read_bytes() == b"a"
    assert world.inside(pwned).read_bytes() == b"p"


@pytest.mark.parametrize("rootless", MODES)
def test_entry_cannot_change_the_type_of_the_root(world: World, rootless: bool) -> None:
    for member in (symlink("./", "/"), entry(".", data=b"x"), hardlink("/", "etc")):
        with pytest.raises(IntegrityError, match="replace the root directory"):
            world.unpack(image_of(tar_of(member)), rootless=rootless)
    assert world.dest.is_dir() and not world.dest.is_symlink()


# --- symlinks written through ---------------------------------------------------------------


def _targets(world: World) -> list[str]:
    return ["../../..", "../../../sentinel", str(world.sentinel), "/"]


@pytest.mark.parametrize("later", [False, True], ids=["same-layer", "later-layer"])
@pytest.mark.parametrize("which", range(4), ids=["dotdot", "dotdot-sentinel", "abs", "slash"])
def test_writing_through_a_symlink_stays_inside(world: World, later: bool, which: int) -> None:
    """The two-step attack: ``x -> ../../..`` (or an absolute path), then ``x/.ssh/…``."""
    link = symlink("x", _targets(world)[which])
    write = entry("x/.ssh/authorized_keys", data=b"ssh-ed25519 attacker")
    layers = [tar_of(link), tar_of(write)] if later else [tar_of(link, write)]
    world.unpack(image_of(*layers))
    assert [p.read_bytes() for p in world.dest.rglob("authorized_keys")] == [
        b"ssh-ed25519 attacker"
    ]
    assert os.readlink(world.dest / "x") == _targets(world)[which]


@pytest.mark.parametrize("later", [False, True], ids=["same-layer", "later-layer"])
def test_an_entry_replaces_a_symlink_rather_than_writing_through_it(
    world: World, later: bool
) -> None:
    links = [symlink("f", str(world.sentinel / "keep")), symlink("d", "../../../sentinel")]
    writes = [entry("f", data=b"evil"), entry("d/", tarfile.DIRTYPE, mode=0o777)]
    layers = [tar_of(*links), tar_of(*writes)] if later else [tar_of(*links, *writes)]
    world.unpack(image_of(*layers))
    assert (world.dest / "f").read_bytes() == b"evil"
    assert (world.dest / "d").is_dir() and not (world.dest / "d").is_symlink()


def test_an_entry_over_a_hardlink_breaks_the_link(world: World) -> None:
    lower = tar_of(entry("etc/", tarfile.DIRTYPE, mode=0o755), entry("etc/passwd", data=b"orig"))
    upper = tar_of(hardlink("x", "etc/passwd"), entry("x", data=b"evil"))
    world.unpack(image_of(lower, upper))
    assert (world.dest / "etc/passwd").read_bytes() == b"orig"
    assert (world.dest / "x").read_bytes() == b"evil"


@pytest.mark.parametrize("later", [False, True], ids=["same-layer", "later-layer"])
def test_etc_and_dev_symlinked_out_of_the_root(world: World, later: bool) -> None:
    links = [symlink("etc", str(world.sentinel)), symlink("dev", "../../../sentinel")]
    writes = [
        entry("etc/passwd", data=b"root::0:0::/:/bin/sh\n"),
        entry("etc/ssh/", tarfile.DIRTYPE, mode=0o755),
        entry("dev/null", data=b""),
        entry("dev/shm/", tarfile.DIRTYPE, mode=0o1777),
    ]
    layers = [tar_of(*links), tar_of(*writes)] if later else [tar_of(*links, *writes)]
    world.unpack(image_of(*layers))
    assert world.inside(world.sentinel / "passwd").read_bytes().startswith(b"root:")
    assert world.inside(world.sentinel / "ssh").is_dir()
    assert (world.dest / "sentinel/null").is_file()
    assert (world.dest / "sentinel/shm").is_dir()


def test_symlink_loops_are_refused(world: World) -> None:
    layer = tar_of(symlink("a", "b"), symlink("b", "a/"), entry("a/x", data=b"x"))
    world.refuses(image_of(layer), "too many levels of symbolic links")


def test_a_file_is_not_a_directory(world: World) -> None:
    layer = tar_of(entry("f", data=b"f"), symlink("l", "/f/"), entry("l/x", data=b"x"))
    message = world.refuses(image_of(layer), "'f' is not a directory")
    assert "entry 'l/x'" in message


@pytest.mark.parametrize(
    "member",
    [entry("d/" + "x" * 256, data=b"x"), symlink("l", "x" * 5000)],
    ids=["component", "link-target"],
)
def test_names_too_long_are_the_layers_fault(world: World, member: Member) -> None:
    """Not a "store error": nothing is wrong with the store, and retrying will not help."""
    world.refuses(image_of(tar_of(member)), "too long")


def test_symlink_with_an_empty_target_is_refused(world: World) -> None:
    world.refuses(image_of(tar_of(symlink("empty", ""))), "empty target")


# --- hard links -----------------------------------------------------------------------------


def test_hardlink_names_climbing_out_are_refused(world: World) -> None:
    world.refuses(
        image_of(tar_of(hardlink("h", "../../../sentinel/keep"))), "climbs out of the root"
    )


@pytest.mark.parametrize("later", [False, True], ids=["same-layer", "later-layer"])
@pytest.mark.parametrize("via_symlink", [False, True], ids=["absolute", "via-symlink"])
def test_hardlink_targets_resolve_inside_the_root(
    world: World, later: bool, via_symlink: bool
) -> None:
    link = symlink("s", str(world.sentinel))
    hard = hardlink("h", "s/keep" if via_symlink else str(world.sentinel / "keep"))
    layers = [tar_of(link), tar_of(hard)] if later else [tar_of(link, hard)]
    world.refuses(image_of(*layers), "does not exist", layer=int(later))


@pytest.mark.parametrize("rootless", MODES)
def test_no_chmod_through_a_hardlink_to_a_symlink(world: World, rootless: bool) -> None:
    layer = tar_of(
        symlink("s", str(world.sentinel / "keep")),
        symlink("s2", "../../../sentinel/keep"),
        hardlink("h", "s", mode=0o4777),
        hardlink("h2", "s2", mode=0o777),
    )
    world.unpack(image_of(layer), rootless=rootless)
    assert (world.dest / "h").lstat().st_ino == (world.dest / "s").lstat().st_ino
    assert os.readlink(world.dest / "h2") == "../../../sentinel/keep"


def test_hardlink_to_a_directory_is_refused(world: World) -> None:
    d = entry("d/", tarfile.DIRTYPE, mode=0o755)
    world.refuses(image_of(tar_of(d, hardlink("h", "d"))), "hard link to directory 'd'")


def test_hardlink_to_the_root_is_refused(world: World) -> None:
    world.refuses(image_of(tar_of(hardlink("h", "./"))), "hard link to the root directory")


# --- whiteouts ------------------------------------------------------------------------------


def test_whiteouts_through_symlinks_stay_inside(world: World) -> None:
    in_root_copy = str(world.sentinel / "keep").lstrip("/")
    lower = tar_of(
        entry(in_root_copy, data=b"in-root copy"),
        entry("sentinel/keep", data=b"in-root copy"),
        entry("sentinel/other", data=b"other"),
        symlink("abs", str(world.sentinel)),
        symlink("rel", "../../../sentinel"),
    )
    upper = tar_of(
        entry("abs/.wh.keep"),
        entry("rel/.wh.keep"),
        entry("rel/.wh..wh..opq"),
        entry("abs/nothere/.wh.keep"),
    )
    world.unpack(image_of(lower, upper))
    assert not world.inside(world.sentinel / "keep").exists()
    assert list((world.dest / "sentinel").iterdir()) == []


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh..."])
def test_invalid_whiteouts_are_refused(world: World, name: str) -> None:
    layer = tar_of(entry("dir/", tarfile.DIRTYPE, mode=0o755), entry(f"dir/{name}"))
    message = world.refuses(image_of(layer), "invalid whiteout name")
    assert repr(f"dir/{name}") in message


def test_whiteout_of_what_the_same_layer_wrote_keeps_it(world: World) -> None:
    lower = tar_of(entry("a", data=b"lower"), entry("d/", tarfile.DIRTYPE), entry("d/old"))
    upper = tar_of(
        entry("a", data=b"upper"),
        entry(".wh.a"),
        entry("d/new", data=b"new"),
        entry(".wh.d"),
        entry("d/.wh..wh..opq"),
    )
    world.unpack(image_of(lower, upper))
    assert (world.dest / "a").read_bytes() == b"upper"
    assert sorted(p.name for p in (world.dest / "d").iterdir()) == ["new"]


# --- special files and modes ----------------------------------------------------------------


class _Log:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.warnings.append((event, kw))


@pytest.mark.parametrize("rootless", MODES)
def test_device_nodes(world: World, rootless: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _Log()
    monkeypatch.setattr(extract_module, "log", log)
    layer = tar_of(
        device("dev/null", tarfile.CHRTYPE, 1, 3),
        device("dev/sda", tarfile.BLKTYPE, 8, 0, 0o660),
        device("run/ctl", tarfile.FIFOTYPE, 0, 0, 0o4620),
    )
    stats = world.unpack(image_of(layer), rootless=rootless)
    null, sda, ctl = (world.dest / p for p in ("dev/null", "dev/sda", "run/ctl"))
    assert stat.S_ISFIFO(ctl.lstat().st_mode)
    if rootless:
        assert null.lstat().st_size == 0 and stat.S_ISREG(null.lstat().st_mode)
        assert stat.S_IMODE(sda.lstat().st_mode) == 0o660
        assert stats["devices"]["dev/null"] == {
            "type": "char", "major": 1, "minor": 3, "mode": "0666"
        }  # fmt: skip
        assert stats["devices"]["dev/sda"]["type"] == "block"
        assert stat.S_IMODE(ctl.lstat().st_mode) == 0o620
        assert stats["modes"] == {"run/ctl": 0o4620}
        assert [kw["count"] for _event, kw in log.warnings] == [2]
    else:
        assert stat.S_ISCHR(null.lstat().st_mode) and null.lstat().st_rdev == os.makedev(1, 3)
        assert stat.S_ISBLK(sda.lstat().st_mode)
        assert stat.S_IMODE(ctl.lstat().st_mode) == 0o4620
        assert log.warnings == []


def test_unsupported_entry_types_are_refused(world: World) -> None:
    world.refuses(image_of(tar_of(entry("odd", b"Z"))), "unsupported entry type")


def test_absurd_times_are_skipped_quickly(world: World) -> None:
    """Turning the PAX time ``1e400000`` into nanoseconds exactly takes seconds of CPU (the
    digits grow quadratically); a few hundred such entries would stall the unpack for hours."""
    absurd = ["1e400000", "-1e400000", "inf", "nan", "9" * 30]
    layer = tar_of(
        *(entry(f"f{i}", data=b"x", pax={"mtime": t}) for i, t in enumerate(absurd * 2)),
        entry("d/", tarfile.DIRTYPE, pax={"mtime": "1e400000"}),
        entry("ok", data=b"x", pax={"mtime": "1700000000.123456789"}),
    )
    started = time.monotonic()
    world.unpack(image_of(layer))
    assert time.monotonic() - started < 5
    assert (world.dest / "f0").read_bytes() == b"x" and (world.dest / "d").is_dir()
    assert (world.dest / "ok").stat().st_mtime_ns == 1_700_000_000_123_456_789


# --- limits ---------------------------------------------------------------------------------


def _gzip_stream(parts: Iterator[bytes]) -> tuple[bytes, str]:
    """gzip of the concatenated parts, built incrementally (the tar is never in memory)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    digest = hashlib.sha256()
    out = []
    for part in parts:
        digest.update(part)
        out.append(packer.compress(part))
    out.append(packer.flush())
    return b"".join(out), "sha256:" + digest.hexdigest()


def _zeros(total: int) -> Iterator[bytes]:
    chunk = bytes(1 << 20)
    for _ in range(total >> 20):
        yield chunk


def _bomb_layer(parts: Iterator[bytes]) -> ti.Layer:
    blob, diff_id = _gzip_stream(parts)
    return ti.Layer(ti.Blob(ti.OCI_LAYER_GZIP, blob), diff_id, "gzip")


def test_decompression_bomb_in_one_member_stops_before_reading_it(world: World) -> None:
    info = tarfile.TarInfo("zeros")
    info.size = 64 << 20
    header = info.tobuf(tarfile.PAX_FORMAT)
    layer = _bomb_layer(iter([header, *_zeros(info.size), bytes(1024)]))
    message = world.refuses(image_of(layer), "exceeds the limit", limits=Limits(max_bytes=16 << 20))
    assert "entry 'zeros'" in message
    assert not (world.dest / "zeros").exists()


def test_decompression_bomb_after_the_last_entry_stops_at_the_limit(world: World) -> None:
    small = tar_of(entry("ok", data=b"fine"))
    layer = _bomb_layer(iter([small, *_zeros(64 << 20)]))
    message = world.refuses(
        image_of(layer), "uncompressed size exceeds the limit", limits=Limits(max_bytes=16 << 20)
    )
    assert "after" in message


def test_sparse_files_count_at_the_size_they_unpack_to(world: World) -> None:
    """A sparse file's holes cost nothing in the stream but are written out in full: five
    10 MiB files in 5 KiB of tar must not get past a 16 MiB limit."""
    one = tar_of(sparse("small", 4096))
    two = tar_of(*(sparse(f"big{i}", 10 << 20) for i in range(5)))
    message = world.refuses(
        image_of(one, two), "exceeds the limit", layer=1, limits=Limits(max_bytes=16 << 20)
    )
    assert "entry 'big1'" in message
    assert sum(p.stat().st_size for p in world.dest.iterdir()) <= 16 << 20
    assert (world.dest / "small").read_bytes() == bytes(3584) + b"s" * 512


def test_total_size_is_bounded_across_layers(world: World) -> None:
    one = tar_of(entry("a", data=bytes(600_000)))
    two = tar_of(entry("b", data=bytes(600_000)))
    world.refuses(
        image_of(one, two), "exceeds the limit", layer=1, limits=Limits(max_bytes=1 << 20)
    )


def test_member_count_is_bounded(world: World) -> None:
    layer = tar_of(*(entry(f"f{i}") for i in range(20)))
    message = world.refuses(image_of(layer), "more than 5 entries", limits=Limits(max_members=5))
    assert "entry 'f5'" in message


def test_extended_headers_are_bounded(world: World) -> None:
    layer = tar_of(entry("big", pax={"comment": "x" * (2 << 20)}))
    world.refuses(image_of(layer), "extended header of", limits=Limits(max_header=1 << 20))


# --- truncated, malformed and lying layers --------------------------------------------------


def _lying(data: bytes, diff_id: str, compression: str) -> ti.Layer:
    return ti.Layer(ti.Blob(ti.OCI_LAYER_TYPES[compression], data), diff_id, compression)


#: Four entries of 512 header and 3072 data bytes each, then the end of the archive.
SAMPLE = tar_of(*(entry(f"file{i}", data=bytes([i + 1]) * 3000) for i in range(4)))
ENTRY = 3584


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (2 * ENTRY + 1000, "unexpected end of data"),
        (ENTRY + 100, "malformed or truncated tar header"),
        (2 * ENTRY, "does not match the diff_id"),
    ],
    ids=["mid-data", "mid-header", "at-a-boundary"],
)
def test_truncated_tar_is_an_error(world: World, cut: int, match: str) -> None:
    layer = _lying(SAMPLE[:cut], ti.sha256_digest(SAMPLE), "none")
    world.refuses(image_of(layer), match)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_layer_is_an_error(world: World, compression: str) -> None:
    packed = ti.compress(SAMPLE, compression)
    layer = _lying(packed[: len(packed) // 2], ti.sha256_digest(SAMPLE), compression)
    world.refuses(image_of(layer), "")


def test_garbage_header_in_the_middle_is_an_error(world: World) -> None:
    tar = bytearray(SAMPLE)
    tar[ENTRY : ENTRY + 16] = b"garbage-garbage!"  # the second entry's name: a bad checksum
    data = bytes(tar)
    world.refuses(image_of(_lying(data, ti.sha256_digest(data), "none")), "malformed")


def test_corrupt_gzip_is_an_error(world: World) -> None:
    packed = bytearray(gzip.compress(SAMPLE, mtime=0))
    packed[len(packed) // 2] ^= 0xFF
    layer = _lying(bytes(packed), ti.sha256_digest(SAMPLE), "gzip")
    world.refuses(image_of(layer), "")


def test_diff_id_mismatch_is_an_error(world: World) -> None:
    layer = _lying(ti.compress(SAMPLE, "gzip"), ti.sha256_digest(b"something else"), "gzip")
    world.refuses(image_of(layer), "does not match the diff_id")


def test_blob_changed_in_the_store_is_an_error(world: World) -> None:
    image = image_of(SAMPLE, compression="none")
    for blob in (*image.blobs, image.manifest):
        world.store.put_bytes(blob.data)
    path = world.store.blob_path(Digest.parse(image.layers[0].blob.digest))
    path.chmod(0o644)
    path.write_bytes(SAMPLE[:-1] + b"\x01")  # a change in the end-of-archive padding
    world.refuses(image, "blob is corrupt in the store")
