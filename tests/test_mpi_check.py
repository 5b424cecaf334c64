"""``ucore mpi check`` and ``run --mpi=host`` on real images from the local registry, against
this host's real MPI (Debian's Open MPI, which tests/setup-host.sh installs).

The matching image is the MPI test image (``support/mpi.py``: Debian's Open MPI, the host's
own release); the mismatching one is the Debian image with Debian's MPICH library over it
(``support/mpich.py``). Both are built as root into the test cache (tests/setup-host.sh builds
the Debian and MPICH ones for every environment); the tests of the Open MPI image, of Slurm
and of runs under the host's launchers are marked ``hpc``.
That the host's library is what a program in the container loads is read from the program's
own ``/proc/self/maps``: the inode of the ``libmpi`` it mapped is the host file's, not the
image's copy at the same path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from support import debian, mpi, mpich
from support.cli import Ucore, assert_error_line
from support.slurm import Slurm

from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer

HOST_LIBMPI = os.path.realpath("/usr/lib/x86_64-linux-gnu/libmpi.so.40")
#: A program that loads libmpi.so.40 as the container's loader finds it, then shows its maps.
PROBE = ("sh", "-c", "LD_PRELOAD=libmpi.so.40 cat /proc/self/maps")


@pytest.fixture(scope="module")
def openmpi_image(registry: RegistryServer) -> str:
    try:
        tar = mpi.mpi_rootfs_tar()
    except debian.CacheMissing as missing:
        pytest.fail(str(missing))
    Pusher(registry.url).push("mpi-check/openmpi:4", mpi.mpi_image(tar))
    return f"{registry.address}/mpi-check/openmpi:4"


@pytest.fixture(scope="module")
def mpich_image(registry: RegistryServer) -> str:
    try:
        base, layer = debian.debian_rootfs_tar(), mpich.mpich_layer_tar()
    except debian.CacheMissing as missing:
        pytest.fail(str(missing))
    Pusher(registry.url).push("mpi-check/mpich:4", mpich.mpich_image(base, layer))
    return f"{registry.address}/mpi-check/mpich:4"


def host_version() -> str:
    """The host's Open MPI release, from the banner in its own library."""
    found = re.search(rb"\0v(\d+\.\d+\.\d+)\0", Path(HOST_LIBMPI).read_bytes())
    assert found
    return found.group(1).decode()


@pytest.mark.hpc
def test_matching_image_is_compatible(ucore_cli: Ucore, openmpi_image: str) -> None:
    ucore_cli.ok("pull", openmpi_image)
    result = ucore_cli.ok("mpi", "check", "--launcher", "mpirun", "--json", openmpi_image)
    report = json.loads(result.stdout)
    assert report["compatible"] is True and report["problems"] == []
    assert report["image"]["mpi"]["flavour"] == "Open MPI"
    assert report["image"]["mpi"]["version"] == host_version()
    assert report["image"]["mpi"]["soname"] == "libmpi.so.40"
    assert report["host"]["mpi"]["soname"] == "libmpi.so.40"
    assert report["host_bind"] == {"possible": True, "refusal": None}
    # the words, on a container made from it (read in place, nothing unpacked)
    ucore_cli.ok("create", "--name", "ompi", openmpi_image)
    text = ucore_cli.ok("mpi", "check", "--launcher", "mpirun", "ompi").stdout
    assert "with mpirun: compatible" in text
    assert f"image: Open MPI {host_version()} (libmpi.so.40)" in text
    assert ucore_cli.store.joinpath("containers").is_dir()


def test_mismatching_image_is_explained(ucore_cli: Ucore, mpich_image: str, tmp_path: Path) -> None:
    ucore_cli.ok("pull", mpich_image)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    result = ucore_cli.run("mpi", "check", "--launcher", "mpirun", mpich_image, env=env)
    assert result.returncode == 9, result
    assert (
        f"problem: the image has MPICH 4.0.2 (libmpich.so.12); the host launcher is Open MPI"
        f" {host_version()} (libmpi.so.40): ranks will start as singletons"
    ) in result.stdout
    assert "run --mpi=host: refused: the image has MPICH 4.0.2" in result.stdout
    assert result.stderr == ""
    # the image is unpacked for the check in TMPDIR; nothing of that is left behind
    assert list(scratch.iterdir()) == []


def test_check_of_what_is_not_there(ucore_cli: Ucore) -> None:
    result = ucore_cli.fails(3, "mpi", "check", "no-such-image")
    assert "no-such-image" in assert_error_line(result)
    ucore_cli.fails(2, "mpi", "check", "--launcher", "aprun", "x")
    ucore_cli.fails(2, "mpi")


def _mapped(maps: str) -> set[tuple[int, int, int]]:
    """(device major, minor, inode) of every file a process maps: whatever path a view or an
    engine shows it under, the file itself."""
    out = set()
    for fields in (line.split() for line in maps.splitlines()):
        if len(fields) >= 6 and fields[4] != "0":
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            out.add((major, minor, int(fields[4])))
    return out


def _file(path: Path | str) -> tuple[int, int, int]:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


@pytest.mark.hpc
@pytest.mark.parametrize("engine", ["proot", "runc", "crun"])
def test_host_mpi_is_what_the_program_loads(
    ucore_cli: Ucore, openmpi_image: str, engine: str
) -> None:
    ucore_cli.ok("create", "--name", "ompi", openmpi_image)
    ucore_cli.ok("setup", "--engine", engine, "ompi")
    (copy,) = ucore_cli.store.glob("containers/*/ROOT/usr/lib/x86_64-linux-gnu/libmpi.so.40.*")
    host, own = _file(HOST_LIBMPI), _file(copy)
    mapped = _mapped(ucore_cli.ok("run", "ompi", *PROBE).stdout)
    assert own in mapped and host not in mapped
    mapped = _mapped(ucore_cli.ok("run", "--mpi=host", "ompi", *PROBE).stdout)
    assert host in mapped and own not in mapped
    # the setting does what the flag does; --mpi=none turns it off again
    setting = {"UCORE_MPI_BIND": "host"}
    mapped = _mapped(ucore_cli.ok("run", "ompi", *PROBE, env=setting).stdout)
    assert host in mapped and own not in mapped
    mapped = _mapped(ucore_cli.ok("run", "--mpi=none", "ompi", *PROBE, env=setting).stdout)
    assert own in mapped and host not in mapped
    # nothing transient stays in the container's root
    assert not (copy.parents[2] / "local/ucore-mpi").exists()


def test_host_mpi_refused_on_the_mismatching_image(ucore_cli: Ucore, mpich_image: str) -> None:
    result = ucore_cli.fails(9, "run", "--mpi=host", mpich_image, "true")
    assert assert_error_line(result) == (
        f"ucore: --mpi=host: the image has MPICH 4.0.2 (libmpich.so.12); the host has Open MPI"
        f" {host_version()} (libmpi.so.40): not ABI-compatible"
    )
    result = ucore_cli.fails(2, "run", mpich_image, "true", env={"UCORE_MPI_BIND": "bogus"})
    assert "mpi bind 'bogus'" in result.stderr


@pytest.mark.hpc
def test_check_for_srun_reads_what_this_slurm_offers(
    ucore_cli: Ucore, slurm: Slurm, openmpi_image: str, mpich_image: str
) -> None:
    ucore_cli.ok("pull", openmpi_image)
    ucore_cli.ok("pull", mpich_image)
    # inside an allocation srun is the default launcher
    env = {**slurm.env, "SLURM_JOB_ID": "1"}
    report = json.loads(ucore_cli.ok("mpi", "check", "--json", openmpi_image, env=env).stdout)
    assert report["launcher"] == "srun"
    assert set(report["host"]["srun_mpi"]) >= {"pmix", "pmi2"}
    assert report["compatible"] and "start the ranks with srun --mpi=pmix" in report["notes"]
    # MPICH speaks PMI-2, which this Slurm offers: srun can start what mpirun cannot
    text = ucore_cli.ok("mpi", "check", mpich_image, env=env).stdout
    assert "with srun: compatible" in text and "srun --mpi=pmi2" in text
    # a Slurm without its configuration cannot say: the check does not guess
    lost = {"SLURM_CONF": "/nonexistent/slurm.conf", "SLURM_JOB_ID": "1"}
    result = ucore_cli.run("mpi", "check", openmpi_image, env=lost)
    assert result.returncode == 9, result
    assert "problem: srun cannot say which PMI it offers:" in result.stdout


@pytest.mark.hpc
def test_two_ranks_run_on_the_host_mpi(ucore_cli: Ucore, openmpi_image: str) -> None:
    """The host's mpirun starts two ranks whose MPI is the host's (PRoot: each rank's
    /proc/self/maps shows the host file's inode)."""
    ucore_cli.ok("create", "--name", "ompi", openmpi_image)
    ucore_cli.ok("setup", "--engine", "proot", "ompi")
    launch = ["mpirun", "-np", "2", "--oversubscribe", "--allow-run-as-root"]
    ring = subprocess.run(
        [*launch, *ucore_cli.argv("run", "--mpi=host", "ompi")],
        env=ucore_cli.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert ring.returncode == 0, ring
    lines = sorted(ln for ln in ring.stdout.splitlines() if ln.startswith("rank "))
    assert lines == [
        "rank 0 of 2: got 20 from 1, big 1048576, sum 3, token 4242",
        "rank 1 of 2: got 10 from 0, big 1048576, sum 3, token 4242",
    ], ring
