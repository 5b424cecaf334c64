"""The parts of ucore-fakechroot on real files: the host's libfakechroot and loader, roots
made in a temporary directory. The engines themselves run in tests/test_fakechroot.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ucore.plugins.carried import Carried
from ucore.values.errors import UsageError
from ucore_fakechroot import elfinfo, library, loadercopy, placement, relink, rootinfo

HOST_LIB = next((p for p in library.host_paths() if os.path.isfile(p)), None)
HOST_LOADER = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
needs_x86 = pytest.mark.skipif(
    not os.path.isfile(HOST_LOADER), reason="tests use the x86_64 GNU loader's name"
)


def test_the_plugin_registers_the_four_modes() -> None:
    from ucore_fakechroot import plugin

    found: dict[str, type] = {}
    plugin.ucore_register_engines(register=found.__setitem__)  # type: ignore[arg-type]
    aliases = [a for cls in found.values() for a in cls.aliases]  # type: ignore[attr-defined]
    assert aliases == ["F1", "F2", "F3", "F4"]


# --- which libfakechroot -----------------------------------------------------------------------


def test_host_library_floor_is_read_from_the_file() -> None:
    assert HOST_LIB, "tests/setup-host.sh installs the Debian package fakechroot"
    libs, problems = library.candidates(None)
    assert not problems
    host = libs[0]
    # Debian bookworm's build needs GLIBC_2.34 (fstat and friends as real symbols)
    assert host.floor >= (2, 14)
    assert max(elfinfo.glibc_names(host.path)) == host.floor
    assert host.ceiling == library.host_glibc()


def test_choice_refuses_what_no_library_serves_and_names_a_fix(tmp_path: Path) -> None:
    lib = library.Library("/x/libfakechroot.so", "test", (2, 34), (2, 36))
    assert library.choose([lib], (2, 36)) is lib
    for glibc in ((2, 31), (2, 39)):
        with pytest.raises(rootinfo.Refusal, match=r"UCORE_FAKECHROOT_SO.*glibc 2\.\d\d"):
            library.choose([lib], glibc)
    with pytest.raises(rootinfo.Refusal, match="no libfakechroot"):
        library.choose([], (2, 36))


def test_configured_library_with_and_without_ceiling(tmp_path: Path) -> None:
    assert HOST_LIB
    copy = tmp_path / "libfakechroot-custom.so"
    shutil.copy(HOST_LIB, copy)
    libs, problems = library.candidates(f"{copy}@2.39:{tmp_path}/missing.so:{copy}@x")
    configured = [lib for lib in libs if lib.origin == "configured"]
    assert [lib.ceiling for lib in configured] == [(2, 39)]
    assert len(problems) == 2 and "missing.so" in problems[0] and "PATH@2.N" in problems[1]
    assert library.choose(libs, (2, 39)).path == str(copy)  # the host's stops at its glibc


def test_order_is_configured_then_carried_then_the_hosts(tmp_path: Path) -> None:
    """A wheel's carried builds (here copies of the host's library, with the manifest the
    build writes) come after the site's setting and before the host's package; each carried
    build's ceiling is its suite's glibc."""
    assert HOST_LIB
    carried_dir = tmp_path / "carried"
    (carried_dir / "bookworm").mkdir(parents=True)
    shutil.copy(HOST_LIB, carried_dir / "bookworm" / "libfakechroot.so")
    entry = {"package": "libfakechroot", "version": "2.20.1+ds-15", "suite": "bookworm"}
    manifest = {
        "distribution": "ucore-fakechroot",
        "packages": [
            {**entry, "suite_glibc": "2.36", "files": {"bookworm/libfakechroot.so": {}}},
            # listed but absent (a damaged install): passed over
            {**entry, "suite": "trixie", "files": {"trixie/libfakechroot.so": {}}},
        ],
    }
    configured = tmp_path / "site.so"
    shutil.copy(HOST_LIB, configured)
    libs, problems = library.candidates(
        f"{configured}@2.36", carried=Carried(str(carried_dir), manifest)
    )
    assert not problems
    assert [lib.origin for lib in libs] == [
        "configured",
        "carried by the ucore-fakechroot wheel: Debian bookworm libfakechroot 2.20.1+ds-15",
        libs[2].origin,
    ]
    assert libs[2].origin.startswith("the host's fakechroot package")
    assert libs[1].ceiling == (2, 36) and libs[1].floor == libs[2].floor
    assert library.choose(libs[1:], (2, 36)).path == str(
        carried_dir / "bookworm" / "libfakechroot.so"
    )


# --- what the image offers ---------------------------------------------------------------------


def _root(tmp_path: Path, sh: str) -> Path:
    root = tmp_path / "root"
    for d in ("bin", "etc/ld.so.conf.d", "usr/lib/x86_64-linux-gnu", "lib64", "opt/lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(sh, root / "bin" / "sh")
    return root


@needs_x86
def test_static_image_is_refused_by_name(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox, "tests/setup-host.sh installs busybox-static"
    with pytest.raises(rootinfo.Refusal, match=r"statically linked.*proot"):
        rootinfo.inspect(_root(tmp_path, busybox))


@needs_x86
def test_musl_image_is_refused_by_name(tmp_path: Path) -> None:
    root = _root(tmp_path, "/bin/true")
    subprocess.run(
        ["patchelf", "--set-interpreter", "/lib/ld-musl-x86_64.so.1", str(root / "bin/sh")],
        check=True,
    )
    with pytest.raises(rootinfo.Refusal, match="musl"):
        rootinfo.inspect(root)


@needs_x86
def test_glibc_image_loader_release_and_library_dirs(tmp_path: Path) -> None:
    root = _root(tmp_path, "/bin/true")
    shutil.copy(HOST_LOADER, root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    os.symlink(
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "lib64/ld-linux-x86-64.so.2"
    )
    libc = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
    shutil.copy(libc, root / "opt/lib/libc.so.6")
    (root / "etc/ld.so.conf").write_text("# comment\ninclude /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/opt.conf").write_text("/opt/lib\n/nowhere\n")
    info = rootinfo.inspect(root)
    assert (
        info.loader == "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )  # the absolute link, inside
    assert info.lib_dirs[0] == "/opt/lib" and "/nowhere" not in info.lib_dirs
    assert info.glibc == library.host_glibc()


# --- F2's loader -------------------------------------------------------------------------------


@needs_x86
def test_private_loader_never_searches_the_hosts_directories(tmp_path: Path) -> None:
    original = Path(HOST_LOADER).read_bytes()
    data = loadercopy.patched(original, rootinfo.multiarch())
    assert len(data) == len(original)
    for name in (b"/etc/ld.so.cache\0", b"\0/lib/x86_64-linux-gnu/\0", b"\0/usr/lib/\0"):
        assert name in original and name not in data
    copy = loadercopy.ensure(tmp_path, HOST_LOADER, rootinfo.multiarch())
    alone = subprocess.run([copy, "/bin/true"], capture_output=True, text=True)
    assert alone.returncode != 0 and "libc.so.6" in alone.stderr  # not found on the host
    libdir = os.path.dirname(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"))
    given = subprocess.run([copy, "--library-path", libdir, "/bin/true"])
    assert given.returncode == 0
    assert loadercopy.ensure(tmp_path, HOST_LOADER, rootinfo.multiarch()) == copy


# --- absolute links ----------------------------------------------------------------------------


def test_absolute_links_become_relative_and_come_back(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/alternatives").mkdir(parents=True)
    (root / "usr/bin/mawk").write_text("awk\n")
    os.symlink("/usr/bin/mawk", root / "etc/alternatives/awk")
    os.symlink("/etc/alternatives/awk", root / "usr/bin/awk")
    os.symlink("/", root / "usr/top")
    os.symlink("mawk", root / "usr/bin/rel")
    os.symlink("../../../../../usr/bin/mawk", root / "etc/climbing")
    assert relink.relink(state, root) == 4
    assert os.readlink(root / "etc/climbing") == "../usr/bin/mawk"  # stops at the root
    assert os.readlink(root / "etc/alternatives/awk") == "../../usr/bin/mawk"
    assert (root / "usr/bin/awk").read_text() == "awk\n"  # resolves inside the root
    assert os.path.samefile(root / "usr/top", root)
    assert relink.relink(state, root) == 0
    assert relink.restore(state, root) == 4
    assert os.readlink(root / "usr/bin/awk") == "/etc/alternatives/awk"
    assert os.readlink(root / "etc/climbing") == "../../../../../usr/bin/mawk"
    assert os.readlink(root / "usr/bin/rel") == "mawk"


# --- placements --------------------------------------------------------------------------------


def test_placements_last_only_for_the_runs_and_restore_the_image(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc").mkdir(parents=True)
    (root / "etc/resolv.conf").write_text("image\n")
    host = tmp_path / "host"
    host.mkdir()
    (host / "resolv.conf").write_text("copy\n")
    wants = [
        placement.Want("/etc/resolv.conf", str(host / "resolv.conf"), True),
        placement.Want("/data/deep", str(host), False),
    ]
    with placement.placed(state, root, wants, ["/dev"]) as first:
        assert (root / "etc/resolv.conf").read_text() == "copy\n"
        assert set(first.exclude) == {"/dev", str(host / "resolv.conf"), str(host)}
        with placement.placed(state, root, wants[:1], []):
            pass  # a second run of the container ends first: it must not restore
        assert (root / "etc/resolv.conf").read_text() == "copy\n"
        other = [placement.Want("/data/deep", str(tmp_path), False)]
        with (
            pytest.raises(UsageError, match="another run"),
            placement.placed(state, root, other, []),
        ):
            pass
        inside = [placement.Want("/data/deep/x", str(tmp_path), False)]
        with pytest.raises(UsageError, match="inside"), placement.placed(state, root, inside, []):
            pass
    assert (root / "etc/resolv.conf").read_text() == "image\n"
    assert not (root / "data").exists()
    assert not list((state / "aside").iterdir())


def test_a_killed_runs_placements_are_restored_by_the_next(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").write_text("image\n")
    want = placement.Want("/etc/hosts", str(tmp_path / "copy"), True)
    (tmp_path / "copy").write_text("copy\n")
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from ucore_fakechroot import placement\n"
        f"w = placement.Want('/etc/hosts', {str(tmp_path / 'copy')!r}, True)\n"
        f"with placement.placed(Path({str(state)!r}), Path({str(root)!r}), [w], []):\n"
        "    os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert (root / "etc/hosts").is_symlink()
    with placement.placed(state, root, [want], []):
        assert (root / "etc/hosts").read_text() == "copy\n"
    assert (root / "etc/hosts").read_text() == "image\n"
