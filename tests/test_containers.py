"""The container commands as udocker users type them: create, ps, rm, inspect, name, rmname,
rename, clone, export, import and protect, against a real registry and a real store.

Run as root and as an unprivileged user: unprivileged, the unpacker opens up directories such
as the multilayer image's ``locked`` (mode 0000), and export must give the image's modes back.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Optional

import pytest
from support.cli import Ucore, assert_error_line, describe

from ucore.storage.store import HOST
from ucore.testing import images as im
from ucore.testing.registry import RegistryServer

ID = re.compile(r"^[0-9a-f]{32}$")


def create(ucore_cli: Ucore, *args: str) -> str:
    out = ucore_cli.ok("create", *args).stdout.strip()
    assert ID.match(out), out
    return out


def ps(ucore_cli: Ucore, *args: str) -> list[dict[str, object]]:
    rows = json.loads(ucore_cli.ok("ps", "--json", *args).stdout)
    assert isinstance(rows, list)
    return rows


def root_of(ucore_cli: Ucore, container: str) -> Path:
    root = Path(ucore_cli.ok("inspect", "-p", container).stdout.strip())
    assert root.is_dir()
    return root


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def content(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def run_binary(
    ucore_cli: Ucore, *args: str, stdin: Optional[bytes] = None
) -> subprocess.CompletedProcess[bytes]:
    """The command with bytes on stdin and stdout (tarballs through pipes)."""
    return subprocess.run(
        ucore_cli.argv(*args),
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=120,
        env=ucore_cli.env,
        check=False,
    )


def no_leftovers(ucore_cli: Ucore) -> None:
    """No staging, trash or temporary files left in the store's container directory."""
    cdir = ucore_cli.store / "containers"
    if cdir.exists():
        odd = [p.name for p in cdir.iterdir() if not ID.match(p.name) and p.name != ".names"]
        assert not odd, odd


# --- create, ps, inspect -----------------------------------------------------------------------


def test_create_ps_inspect(ucore_cli: Ucore, registry: RegistryServer) -> None:
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    cid = create(ucore_cli, "--name=bb", ref)
    rows = ps(ucore_cli)
    assert [(r["id"], r["names"], r["protected"]) for r in rows] == [(cid, ["bb"], False)]
    assert str(rows[0]["image"]).endswith("/busybox:latest")
    listing = ucore_cli.ok("ps", "-m", "-s").stdout
    assert cid in listing and "bb" in listing and "busybox:latest" in listing
    assert "ENGINE" in listing and "SIZE" in listing
    sized = ps(ucore_cli, "-s")
    assert int(str(sized[0]["size"])) > 500_000  # the static busybox

    info = json.loads(ucore_cli.ok("inspect", "bb").stdout)
    assert info["id"] == cid and info["names"] == ["bb"]
    assert info["image_config"]["config"]["Cmd"] == ["sh"]
    root = root_of(ucore_cli, "bb")
    assert root == ucore_cli.store / "containers" / cid / "ROOT"
    assert (root / "bin" / "busybox").is_file()
    assert os.readlink(root / "bin" / "sh") == "busybox"
    assert root_of(ucore_cli, cid[:8]) == root  # an id prefix works too
    ucore_cli.fails(2, "inspect", "-p", ref)  # -p needs a container
    assert json.loads(ucore_cli.ok("inspect", ref).stdout)["config"]  # images still inspect
    ucore_cli.fails(3, "inspect", "no-such-thing")
    ucore_cli.check_store()
    assert stat.S_IMODE((ucore_cli.store / "containers" / cid).stat().st_mode) == 0o700


def test_ps_size_counts_what_is_on_disk(ucore_cli: Ucore, registry: RegistryServer) -> None:
    """As ``du`` does: a file with many hardlinks once, a sparse file by its blocks, and no
    link followed (a loop of links, a link to the host's root)."""
    create(ucore_cli, "--name", "c", f"{registry.address}/busybox:latest")
    before = int(str(ps(ucore_cli, "-s")[0]["size"]))
    root = root_of(ucore_cli, "c")
    (root / "data").write_bytes(os.urandom(4 << 20))
    for i in range(9):
        os.link(root / "data", root / f"data.{i}")
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 40)
    (root / "loop").symlink_to("loop")
    (root / "host").symlink_to("/")
    grown = int(str(ps(ucore_cli, "-s")[0]["size"])) - before
    assert 4 << 20 <= grown < 5 << 20


def test_create_pulls_a_missing_image(ucore_cli: Ucore, registry: RegistryServer) -> None:
    ref = f"{registry.address}/multilayer:latest"
    cid = create(ucore_cli, ref)
    assert "multilayer" in ucore_cli.ok("images").stdout
    root = root_of(ucore_cli, cid)
    assert (root / "etc" / "hostname").read_bytes() == b"layer3\n"
    ucore_cli.fails(3, "create", f"{registry.address}/no-such-image:latest")
    ucore_cli.check_store()


def test_create_uses_the_local_image_without_a_registry(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    ucore_cli.ok("pull", f"{registry.address}/busybox:latest")
    ucore_cli.ok("tag", f"{registry.address}/busybox:latest", "localonly:1")
    # localonly:1 means docker.io, which the tests' dead proxy makes unreachable: a pull fails
    cid = create(ucore_cli, "--name", "local", "localonly:1")
    assert ps(ucore_cli)[0]["id"] == cid


def test_create_name_errors(ucore_cli: Ucore, registry: RegistryServer) -> None:
    ref = f"{registry.address}/busybox:latest"
    first = create(ucore_cli, "--name", "same", ref)
    err = assert_error_line(ucore_cli.fails(2, "create", "--name", "same", ref))
    assert "already in use" in err
    ucore_cli.fails(2, "create", "--name", "bad/name", ref)
    ucore_cli.fails(2, "create", "--name", "0123456789abcdef0123456789abcdef", ref)
    ucore_cli.fails(2, "create", "--force", ref)  # --force needs --name
    assert [r["id"] for r in ps(ucore_cli)] == [first]
    no_leftovers(ucore_cli)


def test_create_force_takes_the_name_over(ucore_cli: Ucore, registry: RegistryServer) -> None:
    ref = f"{registry.address}/busybox:latest"
    old = create(ucore_cli, "--name", "job", ref)
    new = create(ucore_cli, "--name", "job", "--force", ref)
    names = {r["id"]: r["names"] for r in ps(ucore_cli)}
    assert names == {old: [], new: ["job"]}
    ucore_cli.ok("protect", "job")
    ucore_cli.fails(2, "create", "--name=job", "--force", ref)
    assert len(ps(ucore_cli)) == 2, "the refused create left a container behind"


def test_concurrent_creates_with_one_name(ucore_cli: Ucore, registry: RegistryServer) -> None:
    """Eight batch jobs create the same name at once: exactly one wins, the others fail at
    once with one clear line (status 2), and nothing half-made is left."""
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    procs = [ucore_cli.popen("create", "--name", "same", ref) for _ in range(8)]
    results = [(p.returncode, out, err) for p in procs for out, err in [p.communicate(timeout=120)]]
    winners = [out.strip() for code, out, _err in results if code == 0]
    assert len(winners) == 1, results
    for code, _out, err in results:
        if code != 0:
            assert code == 2, results
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ucore: "), err
            assert "same" in lines[0]
    rows = ps(ucore_cli)
    assert [(r["id"], r["names"]) for r in rows] == [(winners[0], ["same"])]
    no_leftovers(ucore_cli)
    ucore_cli.check_store()


# --- rm, names, clone, protect --------------------------------------------------------------


def test_rm(ucore_cli: Ucore, registry: RegistryServer) -> None:
    ref = f"{registry.address}/busybox:latest"
    a = create(ucore_cli, "--name", "a", ref)
    b = create(ucore_cli, ref)
    c = create(ucore_cli, "--name", "c", ref)
    ucore_cli.ok("protect", "c")
    assert {r["id"]: r["protected"] for r in ps(ucore_cli)} == {a: False, b: False, c: True}
    assert "P" in ucore_cli.ok("ps").stdout.split(c)[1].split()[0]
    err = assert_error_line(ucore_cli.fails(2, "rm", "c"))
    assert "protected" in err
    # several at once: the missing one is reported, the others still go
    result = ucore_cli.fails(3, "rm", "a", "nope", b[:6])
    assert "nope" in result.stderr
    assert [r["id"] for r in ps(ucore_cli)] == [c]
    assert not (ucore_cli.store / "containers" / a).exists()
    ucore_cli.ok("rm", "-f", "c")
    assert ps(ucore_cli) == []
    assert not list((ucore_cli.store / "containers" / ".names").iterdir())
    ucore_cli.ok("create", "--name", "a", ref)  # the name is free again
    no_leftovers(ucore_cli)


@pytest.mark.parametrize(
    "damage",
    [
        b'{"created": "yesterday"}',
        b'{"created": 1e400}',
        b'{"engine": 7}',
        b"\x00[",
        b"dir",
        b"",
        b"[" * 100_000 + b"]" * 100_000,  # past json's recursion limit: was an internal error
    ],
    # short ids: pytest puts the test's id in PYTEST_CURRENT_TEST, which every ucore started
    # by the test inherits, and an environment string over 128 KiB makes exec fail (E2BIG)
    ids=["created-text", "created-inf", "engine-number", "nul", "directory", "empty", "deep"],
)
def test_a_damaged_container_is_listed_and_removed_with_rm_force(
    ucore_cli: Ucore, registry: RegistryServer, damage: bytes
) -> None:
    """A container record damaged by hand: ``ps`` still lists every container (the damaged
    one flagged), commands using it fail in one line, and ``rm -f`` (only with -f: whether it
    was protected cannot be read) removes it and frees its name."""
    ref = f"{registry.address}/busybox:latest"
    bad = create(ucore_cli, "--name", "bad", ref)
    good = create(ucore_cli, "--name", "good", ref)
    meta = ucore_cli.store / "containers" / bad / "container.json"
    if damage == b"dir":
        meta.unlink()
        meta.mkdir()
    elif not damage:
        meta.unlink()
    else:
        meta.write_bytes(damage)
    rows = {r["id"]: r for r in ps(ucore_cli)}
    assert set(rows) == {bad, good}
    assert "error" in rows[bad] and rows[bad]["names"] == ["bad"] and "error" not in rows[good]
    assert "bad" in ucore_cli.ok("ps").stdout
    for command in (("inspect", "bad"), ("run", "bad", "true"), ("clone", "bad")):
        ucore_cli.fails(7, *command)
    assert "rm -f" in ucore_cli.fails(7, "rm", "bad").stderr
    ucore_cli.ok("rm", "-f", "bad")
    assert [r["id"] for r in ps(ucore_cli)] == [good]
    create(ucore_cli, "--name", "bad", ref)
    no_leftovers(ucore_cli)


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(
    ucore_cli: Ucore, registry: RegistryServer, test_images: im.TestImages, tmp_path: Path
) -> None:
    """Each command that writes the store, on a disk with nothing (or half a layer) left:
    exit 7 with one line, no staging directory or temporary file left, and the name it was
    to give still free."""
    ref = f"{registry.address}/busybox:latest"
    src = create(ucore_cli, "--name", "src", ref)
    half = test_images.busybox.layers[0].blob.size // 2048
    attempts = [
        (0, ("create", "--name", "new", ref)),
        (half, ("create", "--name", "new", ref)),
        (0, ("clone", "--name", "new", "src")),
        (half, ("clone", "--name", "new", "src")),
        (0, ("name", "src", "new")),
        (0, ("rename", "src", "new")),
        (0, ("tag", ref, "other:1")),
        (0, ("protect", "src")),
    ]
    for n, (free, command) in enumerate(attempts):
        mount = tmp_path / f"mnt{n}"
        mount.mkdir()
        result = ucore_cli.on_full_disk(free, mount, *command)
        assert result.returncode == 7, describe(result)
        assert "disk full" in assert_error_line(result), command
        assert not list((ucore_cli.store / "tmp").iterdir()), command
        no_leftovers(ucore_cli)
        assert [(r["id"], r["names"], r["protected"]) for r in ps(ucore_cli)] == [
            (src, ["src"], False)
        ], command
    ucore_cli.check_store()
    ucore_cli.ok("name", "src", "new")
    ucore_cli.ok("clone", "src")


def test_a_store_of_another_user_that_others_can_write_is_refused(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    """Nobody's world-writable directory as ``UCORE_DIR``: neither used (anyone could swap its
    blobs) nor taken over with a chmod; nothing is made in it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give the directory to another user")
    ucore_cli.store.mkdir(mode=0o777)
    ucore_cli.store.chmod(0o777)
    os.chown(ucore_cli.store, 65534, 65534)
    err = ucore_cli.fails(7, "create", f"{registry.address}/busybox:latest").stderr
    assert "another user" in err
    assert stat.S_IMODE(ucore_cli.store.stat().st_mode) == 0o777
    assert list(ucore_cli.store.iterdir()) == []


def test_a_file_in_place_of_the_names_directory_breaks_nothing_but_names(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    ref = f"{registry.address}/busybox:latest"
    cid = create(ucore_cli, "--name", "a", ref)
    names = ucore_cli.store / "containers" / ".names"
    for entry in names.iterdir():
        entry.unlink()
    names.rmdir()
    names.write_text("junk\n")
    assert [(r["id"], r["names"]) for r in ps(ucore_cli)] == [(cid, [])]
    ucore_cli.fails(7, "create", "--name", "b", ref)
    ucore_cli.ok("rm", cid)


def test_a_store_that_is_a_file_is_one_line_about_the_store(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    ucore_cli.store.write_text("not a store\n")
    err = ucore_cli.fails(7, "create", f"{registry.address}/busybox:latest").stderr
    assert str(ucore_cli.store) in err and "config" not in err
    assert ps(ucore_cli) == []
    assert ucore_cli.store.read_text() == "not a store\n"


def test_a_directory_in_place_of_a_name_breaks_nothing(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    ref = f"{registry.address}/busybox:latest"
    cid = create(ucore_cli, "--name", "a", ref)
    (ucore_cli.store / "containers" / ".names" / "junk").mkdir()
    assert [r["names"] for r in ps(ucore_cli)] == [["a"]]
    ucore_cli.fails(3, "inspect", "junk")
    new = create(ucore_cli, "--name", "junk", ref)  # nobody's reservation: taken over
    assert {r["id"]: r["names"] for r in ps(ucore_cli)} == {cid: ["a"], new: ["junk"]}
    assert not list((ucore_cli.store / "tmp").iterdir())


def nest(root: Path, depth: int) -> None:
    """``d/d/d/…`` below ``root``, deeper than Python's recursion limit and PATH_MAX."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def test_what_the_container_locked_is_exported_and_removed(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    """A program in the container made directories unreadable and read-only (as Go's module
    cache does) and nested directories deeper than Python's recursion limit: export, ps -s and
    rm still work, and export changes nothing in the container."""
    create(ucore_cli, "--name", "locked", f"{registry.address}/busybox:latest")
    root = root_of(ucore_cli, "locked")
    (root / "x" / "y" / "z").mkdir(parents=True)
    (root / "x" / "y" / "z" / "f").write_text("hi\n")
    for path, mode in (("x/y/z/f", 0o000), ("x/y/z", 0o500), ("x/y", 0o000), ("x", 0o100)):
        os.chmod(root / path, mode)
    os.chmod(root / "etc", 0o555)
    nest(root, 1200)
    data = export_bytes(ucore_cli, "locked")
    found = members(data)
    assert found["x"].mode == 0o100 and found["x/y"].mode == 0o000
    assert content(data, "x/y/z/f") == b"hi\n"
    assert "/".join(["d"] * 1200) in found
    assert stat.S_IMODE((root / "x").lstat().st_mode) == 0o100
    assert ps(ucore_cli, "-s")[0]["size"]
    ucore_cli.ok("rm", "locked")
    assert ps(ucore_cli) == []
    assert list((ucore_cli.store / "containers").iterdir()) == [
        ucore_cli.store / "containers" / ".names"
    ]


def test_what_a_killed_rm_or_create_left_is_removed_later(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    """``kill -9`` during ``rm`` leaves the container half removed under a temporary name, and
    during ``create`` a half-made one: the next ``rm`` (or ``create``) finishes the job, and
    ``rm`` of the half-removed container's id succeeds. What a live process is working on
    stays."""
    ref = f"{registry.address}/busybox:latest"
    gone, made, live = (create(ucore_cli, "--name", n, ref) for n in ("gone", "made", "live"))
    cdir = ucore_cli.store / "containers"
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.rename(cdir / gone, cdir / f".removing-{gone}.{HOST}.{dead.pid}")
    os.chmod(cdir / f".removing-{gone}.{HOST}.{dead.pid}" / "ROOT" / "etc", 0o500)
    os.rename(cdir / made, cdir / f".staging-{made}.{HOST}.{dead.pid}")
    os.rename(cdir / live, cdir / f".staging-{live}.{HOST}.{os.getpid()}")
    assert ucore_cli.ok("rm", gone).stdout == f"{gone}\n"
    assert {p.name for p in cdir.iterdir()} == {".names", f".staging-{live}.{HOST}.{os.getpid()}"}
    ucore_cli.fails(3, "rm", gone)  # now it is really gone
    os.rename(
        cdir / f".staging-{live}.{HOST}.{os.getpid()}", cdir / f".staging-{live}.{HOST}.{dead.pid}"
    )
    again = create(ucore_cli, ref)
    assert [r["id"] for r in ps(ucore_cli)] == [again]
    no_leftovers(ucore_cli)


def test_rm_refuses_a_container_with_something_mounted_in_it(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    """A filesystem mounted in a container's directory (a bind mount left behind, a FUSE mount
    of a data set) belongs to someone else: rm must not empty it. As root, with a bind mount
    (unprivileged users mount with FUSE, which this host may lack)."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    create(ucore_cli, "--name", "c", f"{registry.address}/busybox:latest")
    data = tmp_path / "my data"
    data.mkdir()
    (data / "precious").write_text("keep me\n")
    target = root_of(ucore_cli, "c") / "tmp" / "in use"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(data), str(target)], check=True)
    try:
        err = assert_error_line(ucore_cli.fails(2, "rm", "-f", "c"))
        assert "mounted" in err and "in use" in err
        assert (data / "precious").read_text() == "keep me\n"
        assert [r["names"] for r in ps(ucore_cli)] == [["c"]]
    finally:
        subprocess.run(["umount", str(target)], check=True)
    ucore_cli.ok("rm", "c")
    assert (data / "precious").read_text() == "keep me\n"
    no_leftovers(ucore_cli)


def test_name_rmname_rename(ucore_cli: Ucore, registry: RegistryServer) -> None:
    ref = f"{registry.address}/busybox:latest"
    cid = create(ucore_cli, ref)
    other = create(ucore_cli, "--name", "taken", ref)
    ucore_cli.ok("name", cid, "first")
    ucore_cli.ok("name", "first", "second")
    assert {r["id"]: r["names"] for r in ps(ucore_cli)}[cid] == ["first", "second"]
    ucore_cli.fails(2, "name", cid, "taken")
    ucore_cli.fails(2, "name", cid, "-bad")
    ucore_cli.fails(3, "name", "nope", "x")
    ucore_cli.ok("rename", "first", "third")
    ucore_cli.fails(2, "rename", "second", "taken")
    ucore_cli.fails(3, "rename", "first", "fourth")
    assert {r["id"]: r["names"] for r in ps(ucore_cli)} == {
        cid: ["second", "third"],
        other: ["taken"],
    }
    ucore_cli.ok("rmname", "second")
    ucore_cli.fails(3, "rmname", "second")
    ucore_cli.fails(3, "inspect", "second")
    assert root_of(ucore_cli, "third").parent.name == cid


def test_clone(ucore_cli: Ucore, registry: RegistryServer) -> None:
    ref = f"{registry.address}/multilayer:latest"
    src = create(ucore_cli, "--name", "src", ref)
    copy = ucore_cli.ok("clone", "--name=copy", "src").stdout.strip()
    assert ID.match(copy) and copy != src
    a, b = root_of(ucore_cli, "src"), root_of(ucore_cli, "copy")
    assert (b / "etc" / "hostname").read_bytes() == b"layer3\n"
    assert os.readlink(b / "usr" / "bin" / "tool-abs") == "/usr/bin/tool"
    assert stat.S_IMODE((b / "data" / "secret").lstat().st_mode) == stat.S_IMODE(
        (a / "data" / "secret").lstat().st_mode
    )
    (b / "etc" / "hostname").write_text("changed\n")
    assert (a / "etc" / "hostname").read_bytes() == b"layer3\n"
    # the copy exports the image's modes as the original does
    assert members(export_bytes(ucore_cli, "copy"))["locked"].mode == 0o000
    ucore_cli.fails(2, "clone", "--name", "src", "copy")
    ucore_cli.fails(3, "clone", "nope")
    assert len(ps(ucore_cli)) == 2


def test_clone_copies_fifos_sockets_and_device_nodes_as_nodes(
    ucore_cli: Ucore, tmp_path: Path
) -> None:
    """Copying them as files would fail on a FIFO (or hang, opening it), and as root would
    read a device: a clone of an image with /dev/zero would fill the disk."""
    nodes = [("run/fifo", tarfile.FIFOTYPE), ("dev/null", tarfile.CHRTYPE)]
    tarball = tmp_path / "nodes.tar"
    with tarfile.open(tarball, "w") as tar:
        for name, kind in nodes:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.devmajor, info.devminor = kind, 0o640, 1, 3
            tar.addfile(info)
    ucore_cli.ok("import", "--tocontainer", "--name", "src", str(tarball))
    src = root_of(ucore_cli, "src")
    os.mknod(src / "run" / "sock", stat.S_IFSOCK | 0o600)  # left by a program in the container
    ucore_cli.ok("clone", "--name", "copy", "src")
    copy = root_of(ucore_cli, "copy")
    for path in ("run/fifo", "run/sock", "dev/null"):
        a, b = (src / path).lstat(), (copy / path).lstat()
        assert (stat.S_IFMT(b.st_mode), b.st_mode, b.st_rdev, b.st_size) == (
            stat.S_IFMT(a.st_mode), a.st_mode, a.st_rdev, a.st_size
        ), path  # fmt: skip
    ucore_cli.check_store()


def tree(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything a copy must keep of each entry below ``top``: type, mode, owner, times,
    size, device, link target, extended attributes, and which entries share an inode.
    Iterative (the trees nest deeper than the recursion limit); a directory a program in the
    container locked is opened up to be listed, after its mode is noted."""
    out: dict[str, tuple[object, ...]] = {}
    first: dict[int, str] = {}
    pending = [""]
    while pending:
        rel = pending.pop()
        path = top / rel if rel else top
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        link = os.readlink(path) if kind == stat.S_IFLNK else None
        attrs = [] if link is not None else sorted(
            (k, os.getxattr(path, k)) for k in os.listxattr(path)
        )  # fmt: skip
        group = first.setdefault(st.st_ino, rel) if kind != stat.S_IFDIR else None
        size = st.st_size if kind != stat.S_IFDIR else None
        out[rel] = (kind, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, size, st.st_rdev,
                    link, attrs, group)  # fmt: skip
        if kind == stat.S_IFDIR:
            os.chmod(path, st.st_mode | 0o700)
            pending += [f"{rel}/{n}" if rel else n for n in os.listdir(path)]
    return out


def test_clone_keeps_owners_links_times_and_holes(ucore_cli: Ucore, tmp_path: Path) -> None:
    """A clone is the same tree: owners (as root), modes, times, hardlinks as hardlinks (one
    whose first name is in a directory a program locked too), symlinks, extended attributes;
    a directory a program locked, a tree deeper than the
    recursion limit and a huge sparse file (copied as holes, not as a disk full of zeros)."""
    tarball = tmp_path / "owned.tar"
    with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, owner: int, **extra: object) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = kind, mode, owner, owner + 1
            info.mtime = 1_000_000_000 + owner
            for key, value in extra.items():
                setattr(info, key, value)
            data = b"data of " + name.encode() if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("srv", tarfile.DIRTYPE, 0o750, 1234)
        add("srv/app", tarfile.REGTYPE, 0o4755, 1000)
        add("srv/same", tarfile.LNKTYPE, 0o4755, 1000, linkname="srv/app")
        add("srv/link", tarfile.SYMTYPE, 0o777, 42, linkname="../etc/none")
        add("srv/tagged", tarfile.REGTYPE, 0o640, 7,
            pax_headers={"SCHILY.xattr.user.origin": "image"})  # fmt: skip
    ucore_cli.ok("import", "--tocontainer", "--name", "src", str(tarball))
    src = root_of(ucore_cli, "src")
    with open(src / "sparse", "wb") as f:
        f.truncate(1 << 30)
        f.write(b"head")
    (src / "locked" / "in").mkdir(parents=True)
    (src / "locked" / "in" / "f").write_text("locked away\n")
    os.link(src / "locked" / "in" / "f", src / "z-linked")  # copied after "locked" is shut
    os.chmod(src / "locked" / "in", 0o000)
    os.chmod(src / "locked", 0o000)
    nest(src, 1200)

    ucore_cli.ok("clone", "--name", "copy", "src")
    copy = root_of(ucore_cli, "copy")
    assert stat.S_IMODE((src / "locked").lstat().st_mode) == 0o000, "the source was changed"
    assert (copy / "sparse").stat().st_blocks * 512 < 1 << 20, "the holes were filled"
    expected = tree(src)
    assert expected["srv/same"][-1] == "srv/app" or expected["srv/app"][-1] == "srv/same"
    if os.geteuid() == 0:
        assert expected["srv/app"][2:4] == (1000, 1001)
        assert expected["srv/link"][2:4] == (42, 43)
    assert tree(copy) == expected
    ucore_cli.ok("rm", "src", "copy")
    ucore_cli.check_store()
    no_leftovers(ucore_cli)


def test_protect_image_refuses_rmi(ucore_cli: Ucore, registry: RegistryServer) -> None:
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    ucore_cli.ok("protect", ref)
    err = assert_error_line(ucore_cli.fails(2, "rmi", ref))
    assert "protected" in err
    ucore_cli.ok("unprotect", ref)
    ucore_cli.ok("protect", ref)
    ucore_cli.ok("rmi", "-f", ref)  # -f overrides the protection, as for rm
    assert ucore_cli.blobs() == set()
    ucore_cli.ok("pull", ref)
    ucore_cli.ok("protect", ref)
    ucore_cli.ok("unprotect", ref)
    ucore_cli.ok("rmi", ref)
    ucore_cli.fails(3, "protect", "nothing-by-this-name")


def test_a_container_outlives_its_image(ucore_cli: Ucore, registry: RegistryServer) -> None:
    """rmi frees every blob, and the container keeps its image's config (its own copy, as
    udocker keeps one): inspect shows it, and run still applies its Env and Cmd."""
    ref = f"{registry.address}/busybox:latest"
    create(ucore_cli, "--name", "bb", ref)
    ucore_cli.ok("rmi", ref)
    assert ucore_cli.blobs() == set()
    info = json.loads(ucore_cli.ok("inspect", "bb").stdout)
    assert info["image_config"]["config"]["Cmd"] == ["sh"]
    out = ucore_cli.ok("run", "bb", "sh", "-c", "echo $UCORE_TEST_IMAGE").stdout
    assert out == "busybox\n"
    assert ucore_cli.run("run", "bb", input="echo from-cmd\n").stdout == "from-cmd\n"
    ucore_cli.ok("rm", "bb")
    ucore_cli.check_store()


# --- export ---------------------------------------------------------------------------------


def export_bytes(ucore_cli: Ucore, container: str) -> bytes:
    result = run_binary(ucore_cli, "export", container)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def test_export_gives_back_the_image(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    """The image's modes (a 0000 directory too), links as links, root-owned entries."""
    ref = f"{registry.address}/multilayer:latest"
    create(ucore_cli, "--name", "ml", ref)
    root = root_of(ucore_cli, "ml")
    # a program in the container planted a link to a host file: it must stay a link
    (root / "etc" / "host-shadow").symlink_to("/etc/shadow")
    out = tmp_path / "out"
    out.mkdir()
    ucore_cli.ok("export", "-o", str(out / "ml.tar"), "ml")
    assert [p.name for p in out.iterdir()] == ["ml.tar"]
    data = (out / "ml.tar").read_bytes()
    assert data == export_bytes(ucore_cli, "ml"), "stdout and -o differ"
    assert data == run_binary(ucore_cli, "export", "-", "ml").stdout  # udocker's form
    found = members(data)
    for path, expected in im.MULTILAYER_EXPECTED.items():
        if expected is None:
            assert path not in found, path
            continue
        member = found[path]
        if expected[0] == "file":
            assert member.isfile() or member.islnk(), path
            assert member.mode == expected[2], (path, oct(member.mode))
            name = member.linkname if member.islnk() else path
            assert content(data, name) == expected[1], path
        elif expected[0] == "dir":
            assert member.isdir() and member.mode == expected[1], (path, oct(member.mode))
        else:
            assert member.issym() and member.linkname == expected[1], path
    for a, b in im.MULTILAYER_HARDLINKS:
        pair = sorted([a, b])
        assert found[pair[1]].islnk() and found[pair[1]].linkname == pair[0], pair
    assert found["etc/host-shadow"].issym()
    assert found["etc/host-shadow"].linkname == "/etc/shadow"
    assert found["etc/host-shadow"].size == 0
    assert all(m.uid == 0 and m.gid == 0 for m in found.values())
    # the export changed nothing in the container (unpacked rootless: owner rw added)
    secret_mode = 0o000 if os.geteuid() == 0 else 0o600
    assert stat.S_IMODE((root / "data" / "secret").lstat().st_mode) == secret_mode
    ucore_cli.check_store()


def test_export_writes_hardlinks_as_hardlinks_whatever_they_link(
    ucore_cli: Ucore, tmp_path: Path
) -> None:
    """As tar does: the first path of an inode is the entry, the others hardlinks to it, for
    device nodes (unprivileged, empty placeholders that export turns back into devices) and
    FIFOs too; and the tarball imports back to the same."""
    tarball = tmp_path / "linked.tar"
    with tarfile.open(tarball, "w") as tar:
        for name, kind, target in [
            ("dev/null", tarfile.CHRTYPE, ""),
            ("dev/a-null", tarfile.LNKTYPE, "dev/null"),
            ("dev/z-null", tarfile.LNKTYPE, "dev/null"),
            ("run/fifo", tarfile.FIFOTYPE, ""),
            ("run/again", tarfile.LNKTYPE, "run/fifo"),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, 0o666, target
            info.devmajor, info.devminor = 1, 3
            tar.addfile(info)
    ucore_cli.ok("import", "--tocontainer", "--name", "src", str(tarball))
    data = export_bytes(ucore_cli, "src")
    expected = {
        "dev/a-null": (tarfile.CHRTYPE, ""),
        "dev/null": (tarfile.LNKTYPE, "dev/a-null"),
        "dev/z-null": (tarfile.LNKTYPE, "dev/a-null"),
        "run/again": (tarfile.FIFOTYPE, ""),
        "run/fifo": (tarfile.LNKTYPE, "run/again"),
    }
    found = members(data)
    assert {k: (found[k].type, found[k].linkname) for k in expected} == expected
    assert (found["dev/a-null"].devmajor, found["dev/a-null"].devminor) == (1, 3)
    assert found["dev/a-null"].mode == 0o666
    again = tmp_path / "again.tar"
    again.write_bytes(data)
    ucore_cli.ok("import", "--tocontainer", "--name", "again", str(again))
    assert export_bytes(ucore_cli, "again") == data


def test_export_errors(ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ucore_cli.fails(3, "export", "-o", str(out / "x.tar"), "nope")
    create(ucore_cli, "--name", "bb", f"{registry.address}/busybox:latest")
    ucore_cli.fails(7, "export", "-o", str(out / "missing-dir" / "x.tar"), "bb")
    ucore_cli.fails(2, "export", "--clone", "bb")
    assert list(out.iterdir()) == [], "a failed export left a file behind"


# --- import ---------------------------------------------------------------------------------


def test_export_import_round_trip(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    create(ucore_cli, "--name", "ml", f"{registry.address}/multilayer:latest")
    tarball = tmp_path / "ml.tar"
    ucore_cli.ok("export", "-o", str(tarball), "ml")
    image_id = ucore_cli.ok("import", str(tarball), "imported/ml:1").stdout.strip()
    assert image_id.startswith("sha256:")
    config = json.loads(ucore_cli.ok("inspect", "imported/ml:1").stdout)["config"]
    host = im.host_platform()
    assert (config["os"], config["architecture"]) == host[:2]
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert len(config["rootfs"]["diff_ids"]) == 1
    ucore_cli.ok("verify", "imported/ml:1")
    ucore_cli.ok("protect", "imported/ml:1")
    ucore_cli.fails(2, "import", str(tarball), "imported/ml:1")  # would replace it
    create(ucore_cli, "--name", "again", "imported/ml:1")
    again = run_binary(ucore_cli, "export", "again").stdout
    first, second = members(tarball.read_bytes()), members(again)
    assert sorted(first) == sorted(second)
    for name, member in first.items():
        other = second[name]
        assert (member.type, member.mode, member.linkname, member.size) == (
            other.type,
            other.mode,
            other.linkname,
            other.size,
        ), name
    ucore_cli.check_store()


def test_import_compressed_from_stdin(ucore_cli: Ucore) -> None:
    layer = im.busybox_layer_tar()
    result = run_binary(ucore_cli, "import", "-", "fromstdin:gz", stdin=gzip.compress(layer))
    assert result.returncode == 0, result.stderr
    manifest = json.loads(ucore_cli.ok("inspect", "fromstdin:gz").stdout)["manifest"]
    assert manifest["layers"][0]["mediaType"].endswith("tar+gzip")
    config = json.loads(ucore_cli.ok("inspect", "fromstdin:gz").stdout)["config"]
    assert config["rootfs"]["diff_ids"] == [im.sha256_digest(layer)]
    ucore_cli.ok("verify", "fromstdin:gz")
    ucore_cli.check_store()


def test_import_tocontainer(ucore_cli: Ucore, tmp_path: Path) -> None:
    layer = im.busybox_layer_tar()
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(layer)
    cid = ucore_cli.ok("import", "--tocontainer", "--name", "direct", str(tarball)).stdout.strip()
    assert ID.match(cid)
    rows = ps(ucore_cli)
    assert [(r["id"], r["names"]) for r in rows] == [(cid, ["direct"])]
    assert (root_of(ucore_cli, "direct") / "bin" / "busybox").is_file()
    assert json.loads(ucore_cli.ok("images", "--json").stdout) == [], "an image was kept"
    assert ucore_cli.blobs() == set(), "blobs were kept"
    info = json.loads(ucore_cli.ok("inspect", "direct").stdout)
    assert info["image_config"]["config"]["Cmd"] == ["/bin/sh"]
    ucore_cli.fails(2, "import", "--tocontainer", "--name", "direct", str(tarball))
    ucore_cli.check_store()
    no_leftovers(ucore_cli)
    ucore_cli.ok("rm", "direct")


@pytest.mark.parametrize("command", ["import", "load"])
def test_what_a_killed_import_or_load_left_goes_at_the_next(
    ucore_cli: Ucore, tmp_path: Path, command: str
) -> None:
    """A killed import leaves its partial blob in ``tmp/``; the next import or load removes
    it, not only the next pull (the partial blob of a big tarball eats the quota)."""
    args = ("import", "-", "killed:1") if command == "import" else ("load",)
    proc = subprocess.Popen(
        ucore_cli.argv(*args), stdin=subprocess.PIPE, env=ucore_cli.env, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    big = tarfile.TarInfo("layer.tar")
    big.size = 64 << 20
    proc.stdin.write(big.tobuf() + os.urandom(1 << 20))  # and the rest never comes
    proc.stdin.flush()
    tmp = ucore_cli.store / "tmp"
    for _ in range(200):
        if tmp.is_dir() and any(p.stat().st_size for p in tmp.iterdir()):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    (partial,) = tmp.iterdir()
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("empty"))
    if command == "import":
        ucore_cli.ok("import", str(archive), "fresh:1")
    else:
        ucore_cli.fails(6, "load", "-i", str(archive))
    assert not partial.exists()
    ucore_cli.check_store()


def test_import_refuses_what_is_not_a_tarball(ucore_cli: Ucore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all" * 100)
    ucore_cli.fails(6, "import", str(junk), "junk:1")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(gzip.compress(im.busybox_layer_tar())[:5000])
    ucore_cli.fails(6, "import", str(truncated), "junk:1")
    ucore_cli.fails(6, "import", "--tocontainer", str(truncated))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    ucore_cli.fails(6, "import", str(empty), "junk:1")
    ucore_cli.fails(2, "import", str(tmp_path / "missing.tar"), "junk:1")
    ucore_cli.fails(2, "import", str(junk))  # no NAME:TAG
    ucore_cli.fails(2, "import", "--name", "x", str(junk), "junk:1")  # --name needs --tocontainer
    ucore_cli.fails(2, "import", str(junk), "Bad Name")
    assert ucore_cli.blobs() == set(), "a refused import left blobs behind"
    assert ps(ucore_cli) == []
    ucore_cli.check_store()

    err = assert_error_line(ucore_cli.fails(2, "import", "--clone", str(junk)))
    assert "--clone" in err


def _huge_extended_header(size: int) -> bytes:
    """A gzip'd tarball whose one file has a PAX header of ``size`` bytes (a comment): small on
    disk, but :mod:`tarfile` alone reads an extended header whole into memory."""
    comment = "x" * (size - len(f"{size} comment=\n"))
    record = f"{size} comment={comment}\n".encode()
    assert len(record) == size
    header = tarfile.TarInfo("PaxHeaders/f")
    header.type, header.size = tarfile.XHDTYPE, size
    body = tarfile.TarInfo("f")
    body.size = 1
    padding = bytes(-size % tarfile.BLOCKSIZE)
    tar = b"".join([header.tobuf(tarfile.USTAR_FORMAT), record, padding, body.tobuf(), b"f"])
    return gzip.compress(tar + bytes(511 + 2 * tarfile.BLOCKSIZE))  # padding, end of archive


@pytest.mark.parametrize("command", [["import", "{}", "huge:1"], ["load", "-i", "{}"]])
def test_huge_extended_headers_are_refused(
    ucore_cli: Ucore, tmp_path: Path, command: list[str]
) -> None:
    tarball = tmp_path / "huge.tar.gz"
    tarball.write_bytes(_huge_extended_header(64 << 20))
    err = assert_error_line(ucore_cli.fails(6, *(a.format(tarball) for a in command)))
    assert "extended header of 67108864 bytes exceeds" in err
    assert ucore_cli.blobs() == set()
    ucore_cli.check_store()


def test_a_damaged_copy_of_the_image_config_is_no_internal_error(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    """The container's copy of its image's config, nested past json's recursion limit, is a
    damaged copy like any other (read as empty), not an internal error."""
    cid = create(ucore_cli, "--name", "deep", f"{registry.address}/busybox:latest")
    copy = ucore_cli.store / "containers" / cid / "image-config.json"
    copy.chmod(0o600)
    copy.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert json.loads(ucore_cli.ok("inspect", "deep").stdout)["image_config"] is None


def test_a_mode_record_nested_too_deep_is_a_damaged_record(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    """The record of the modes an unprivileged unpack changed, nested past json's recursion
    limit: export stops with one line (exit 7), as for other damage, not an internal error."""
    create(ucore_cli, "--name", "deep", f"{registry.address}/busybox:latest")
    root = root_of(ucore_cli, "deep")
    record = root.with_name(root.name + ".modes.json")
    if record.exists():
        record.chmod(0o600)
    record.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert (
        "modes.json" in ucore_cli.fails(7, "export", "-o", str(tmp_path / "x.tar"), "deep").stderr
    )
