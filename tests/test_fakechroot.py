"""The Fakechroot engines (F1-F4) on the Debian test image: what only they do.

What every engine does is in test_conformance.py; here: refusing an image no F mode can
serve, F3 surviving a move and a clone, going back to F1 and leaving the F modes restoring
the image's files, ``ldconfig`` neutralised, and the automatic choice on a host without user
namespaces. Real libfakechroot (Debian's package), real patchelf, real debootstrap image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from support import debian, gpuhost
from support.cli import Ucore, assert_error_line, describe

from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer

pytestmark = pytest.mark.fmodes

F_MODES = ("fakechroot", "fakechroot-f2", "fakechroot-f3", "fakechroot-f4")


def root_of(cli: Ucore, container: str) -> Path:
    return Path(cli.ok("inspect", "-p", container).stdout.strip())


def test_a_static_image_gets_the_refusal_not_a_crash(ucore_cli: Ucore, busybox_image: str) -> None:
    ucore_cli.ok("create", "--name", "bb", busybox_image)
    for mode in ("F1", "F3"):
        line = assert_error_line(ucore_cli.fails(8, "setup", "--engine", mode, "bb"))
        assert "statically linked" in line and "proot" in line
    ucore_cli.ok("setup", "--engine", "F2", "--force", "bb")
    line = assert_error_line(ucore_cli.fails(8, "run", "bb", "true"))
    assert "statically linked" in line


def test_f3_keeps_working_after_its_store_moves(debian_image: str, tmp_path: Path) -> None:
    cli = Ucore(tmp_path / "a")
    cli.ok("create", "--name", "c", debian_image)
    cli.ok("setup", "--engine", "F3", "c")
    assert cli.ok("run", "c", "sh", "-c", "awk 'BEGIN{print 6*7}'").stdout == "42\n"
    old = root_of(cli, "c")
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    moved = Ucore(tmp_path / "b")
    out = moved.ok("run", "c", "sh", "-c", "ls /usr/bin/ls && awk 'BEGIN{print 6*7}'").stdout
    assert out == "/usr/bin/ls\n42\n"
    interp = _interpreter(root_of(moved, "c") / "usr/bin/ls")
    assert interp.startswith(str(tmp_path / "b")) and not interp.startswith(str(old))


def test_f3_clone_runs_on_its_own(ucore_cli: Ucore, debian_image: str) -> None:
    ucore_cli.ok("create", "--name", "orig", debian_image)
    ucore_cli.ok("setup", "--engine", "F3", "orig")
    ucore_cli.ok("run", "orig", "true")
    clone = ucore_cli.ok("clone", "orig").stdout.strip()
    ucore_cli.ok("rm", "orig")  # nothing of the original may be needed any more
    out = ucore_cli.ok("run", clone, "sh", "-c", "echo $((1 + 2)); /usr/bin/env true").stdout
    assert out == "3\n"
    assert _interpreter(root_of(ucore_cli, clone) / "usr/bin/ls").startswith(str(ucore_cli.store))


def test_f3_to_f1_restores_every_file_and_leaving_restores_every_link(
    ucore_cli: Ucore, debian_image: str
) -> None:
    ucore_cli.ok("create", "--name", "c", debian_image)
    root = root_of(ucore_cli, "c")
    # the image's bytes; modes as unpacked (an unprivileged unpack drops set-id bits)
    created, links = _files(root), _links(root)
    assert {k: v[0] for k, v in created.items()} == {
        k: v[0] for k, v in _image_files()["files"].items()
    }
    ucore_cli.ok("setup", "--engine", "F3", "c")
    ucore_cli.ok("run", "c", "true")
    assert _files(root) != created, "F3 patched nothing"
    ucore_cli.ok("setup", "--engine", "F1", "c")
    ucore_cli.ok("run", "c", "true")
    assert _files(root) == created
    # F1 keeps absolute links as equivalent relative ones; leaving the F modes puts them back
    assert _links(root) != links
    ucore_cli.ok("setup", "--engine", "P1", "c")
    assert _links(root) == links == _image_files()["links"]


def test_f4_runs_and_patches_what_a_run_made(ucore_cli: Ucore, debian_image: str) -> None:
    """A program that appears at run time (here a copy, as a compiler's output or a pip
    install would be) runs at once through the loader, and is patched after the run."""
    ucore_cli.ok("create", "--name", "c", debian_image)
    ucore_cli.ok("setup", "--engine", "F4", "c")
    root = root_of(ucore_cli, "c")
    script = "cp /usr/bin/echo /usr/local/bin/made && /usr/local/bin/made ran"
    assert ucore_cli.ok("run", "c", "sh", "-c", script).stdout == "ran\n"
    loader = _interpreter(root / "usr/bin/ls")
    assert loader.startswith(str(ucore_cli.store))  # the private loader
    assert _interpreter(root / "usr/local/bin/made") == loader
    assert ucore_cli.ok("run", "c", "/usr/local/bin/made", "again").stdout == "again\n"


def test_ldconfig_inside_does_nothing(ucore_cli: Ucore, debian_image: str) -> None:
    ucore_cli.ok("create", "--name", "c", debian_image)
    ucore_cli.ok("setup", "--engine", "F2", "c")
    cache = root_of(ucore_cli, "c") / "etc/ld.so.cache"
    before = cache.read_bytes()
    host = Path("/etc/ld.so.cache").stat().st_mtime_ns
    out = ucore_cli.ok("run", "c", "sh", "-c", "ldconfig; echo $?; /sbin/ldconfig -p; echo $?")
    assert out.stdout == "0\n0\n", describe(out)
    assert cache.read_bytes() == before
    assert Path("/etc/ld.so.cache").stat().st_mtime_ns == host


@pytest.mark.parametrize("mode", F_MODES)
def test_users_are_emulated_and_refused_without_fakeroot(
    ucore_cli: Ucore, debian_image: str, mode: str
) -> None:
    """libfakeroot shows root (the default) or the -u user; without it (UCORE_FAKEROOT_SO=none)
    the F modes run as the invoking user and refuse another, in one line."""
    ucore_cli.ok("create", "--name", "c", debian_image)
    ucore_cli.ok("setup", "--engine", mode, "c")
    assert ucore_cli.ok("run", "c", "id", "-u").stdout == "0\n"
    assert (
        ucore_cli.ok("run", "-u", "1234:5", "c", "sh", "-c", "id -u; id -g").stdout == "1234\n5\n"
    )
    off = {"UCORE_FAKEROOT_SO": "none"}
    line = assert_error_line(ucore_cli.fails(2, "run", "-u", "1234", "c", "true", env=off))
    assert "invoking user" in line
    me = ucore_cli.ok("run", "c", "id", "-u", env=off).stdout
    assert me == f"{os.getuid()}\n"


def test_fake_owners_last_from_run_to_run(ucore_cli: Ucore, debian_image: str) -> None:
    """What "root" chowns inside is kept in the container's faked table, as fakeroot -s/-i
    keep it; for an unprivileged user the host file stays the user's."""
    ucore_cli.ok("create", "--name", "c", debian_image)
    ucore_cli.ok("setup", "--engine", "F2", "c")
    ucore_cli.ok("run", "c", "sh", "-c", "touch /tmp/owned && chown 1234:5 /tmp/owned")
    assert ucore_cli.ok("run", "c", "stat", "-c", "%u:%g", "/tmp/owned").stdout == "1234:5\n"
    host = (root_of(ucore_cli, "c") / "tmp/owned").stat()
    if os.getuid() != 0:
        assert (host.st_uid, host.st_gid) == (os.getuid(), os.getgid())


def test_without_user_namespaces_the_choice_lands_on_an_f_mode(
    ucore_cli: Ucore, debian_image: str, busybox_image: str
) -> None:
    """As on a cluster that disables user namespaces: ucore runs in a user namespace of its
    own whose ``user.max_user_namespaces`` is 0, so runc, crun and read-only views cannot
    have one (ENOSPC), while the rest of the machine is unaffected."""
    ucore_cli.ok("create", "--name", "deb", debian_image)
    ucore_cli.ok("create", "--name", "bb", busybox_image)
    script = (
        "echo 0 > /proc/sys/user/max_user_namespaces &&"
        ' "$@" run deb sh -c "echo deb ran" && "$@" run bb sh -c "echo bb ran"'
    )
    argv = ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh", *ucore_cli.argv()]
    done = subprocess.run(argv, env=ucore_cli.env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "deb ran\nbb ran\n"), done.stderr
    assert ucore_cli.ok("setup", "deb").stdout.strip() == "fakechroot-f2"
    assert ucore_cli.ok("setup", "bb").stdout.strip() == "proot"


def test_info_names_the_library_of_every_mode(ucore_cli: Ucore) -> None:
    out = ucore_cli.ok("info").stdout
    for alias in ("F1", "F2", "F3", "F4"):
        assert f" {alias} " in out
    assert out.count("libfakechroot: /") == 4
    assert "patchelf: /" in out
    gone = ucore_cli.ok("info", env={"UCORE_PATCHELF": "/nonexistent/patchelf"}).stdout
    rows = [line for line in gone.splitlines() if line.lstrip().startswith("fakechroot-f")]
    assert [("unusable: no patchelf" in r) for r in rows] == [False, True, True], rows


def test_a_configured_library_that_is_not_one_is_reported(ucore_cli: Ucore, tmp_path: Path) -> None:
    bogus = tmp_path / "libfakechroot.so"
    bogus.write_text("not a library\n")
    out = ucore_cli.ok("info", env={"UCORE_FAKECHROOT_SO": str(bogus)}).stdout
    assert f"the configured libfakechroot {bogus} is not a readable library" in out


# --- helpers --------------------------------------------------------------------------------------


def _interpreter(path: Path) -> str:
    from ucore_fakechroot import elfinfo

    found = elfinfo.interpreter(str(path))
    assert found, path
    return found


def _image_files() -> dict[str, dict[str, object]]:
    files: dict[str, object] = {}
    links: dict[str, object] = {}
    with tarfile.open(debian.debian_rootfs_tar()) as tar:
        for member in tar:
            name = "/" + member.name.lstrip("./")
            if member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                files[name] = (hashlib.sha256(data.read()).hexdigest(), member.mode & 0o7777)
            elif member.islnk():  # a hard link: the same file under another name
                files[name] = files["/" + member.linkname.lstrip("./")]
            elif member.issym():
                links[name] = member.linkname
    return {"files": files, "links": links}


def _walk(root: Path) -> list[tuple[str, str]]:
    out = []
    top = str(root)
    for folder, dirs, names in os.walk(top):
        for name in [*names, *(d for d in dirs if os.path.islink(os.path.join(folder, d)))]:
            path = os.path.join(folder, name)
            out.append(("/" + os.path.relpath(path, top), path))
    return out


def _files(root: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for name, path in _walk(root):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            found[name] = (digest, stat.S_IMODE(st.st_mode))
    return found


def _links(root: Path) -> dict[str, object]:
    return {name: os.readlink(path) for name, path in _walk(root) if os.path.islink(path)}


def test_gpu_libraries_reach_the_loader(tmp_path: Path, registry: RegistryServer) -> None:
    """ucore-gpu's bindings in F2, on the tests' synthetic GPU host (no GPU exists here): the
    driver's libcuda and libnvidia-ml, placed in the root for the run, are the ones the
    programs load through the library path. The synthetic host's device nodes live under its
    own directory, not /dev, and F modes show the host's /dev itself, so only the library side
    is checked here; on a GPU node the nodes are the host's /dev/nvidia*."""
    host = gpuhost.build_host(tmp_path / "gpuhost")
    cli = Ucore(tmp_path / "store")
    cli.env["UCORE_DEVICE_ROOT"] = str(host.root)
    reference, image = next(iter(gpuhost.gpu_image_tags().items()))
    Pusher(registry.url).push(reference, image)
    cli.ok("create", "--name", "g", f"{registry.address}/{reference}")
    cli.ok("setup", "--engine", "F2", "g")
    root = root_of(cli, "g")
    before = sorted(p for p in root.rglob("*"))
    assert cli.ok("run", "--gpus", "all", "g", "cudaquery").stdout.endswith(f"cuda: {host.cuda}\n")
    assert cli.ok("run", "--gpus", "all", "g", "nvmlquery").stdout.startswith(
        f"driver: {host.driver}\n"
    )
    missing = cli.run("run", "g", "cudaquery")
    assert missing.returncode == 3, describe(missing)  # no request: no library
    assert sorted(p for p in root.rglob("*")) == before  # placements gone after the runs
