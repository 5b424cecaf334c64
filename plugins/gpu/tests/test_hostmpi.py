"""The host-MPI check and bind on synthetic roots: trees made here from copies of this host's
real Open MPI libraries (Debian's, which tests/setup-host.sh installs), and stand-ins for the
MPIs this host cannot have (MPICH, an older glibc): files holding the identification strings
those libraries carry, named as such in each test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hosts import within, write

from ucore.values.errors import DeviceError
from ucore_gpu import mpibind, mpicheck, mpiinfo
from ucore_gpu.mpicheck import Launchers
from ucore_gpu.mpiinfo import Side, Tree

LIBDIR = "/usr/lib/x86_64-linux-gnu"
#: What ``libmpi.so.40`` needs on Debian 12, and their own needs, but the C library.
OPEN_MPI = (
    "libmpi.so.40",
    "libopen-rte.so.40",
    "libopen-pal.so.40",
    "libhwloc.so.15",
    "libevent_core-2.1.so.7",
    "libevent_pthreads-2.1.so.7",
)
#: The banner and wire-up strings of Debian's MPICH 4.0.2 library (``libmpich.so.12``).
MPICH_BYTES = (
    b"\x7fELF-stand-in\0MPICH Version:\t%s\0/build/mpich-1NaQGN/mpich-4.0.2/src\0"
    b"PMI2_Job_GetId returned %d\0cmd=init pmi_version=%d pmi_subversion=%d\0"
)


def host_version() -> str:
    """The upstream version of this host's Open MPI, as dpkg knows it."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "libopenmpi3"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split("-")[0]


def copy_libraries(root: Path, sonames: tuple[str, ...] = (*OPEN_MPI, "libc.so.6")) -> None:
    """This host's libraries into ``root``: each file under its own name, its soname a
    relative link to it, as Debian lays them out."""
    directory = root / LIBDIR.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    for soname in sonames:
        real = os.path.realpath(f"{LIBDIR}/{soname}")
        shutil.copyfile(real, directory / os.path.basename(real))
        if os.path.basename(real) != soname:
            (directory / soname).symlink_to(os.path.basename(real))


def mpich_root(root: Path, glibc: str = "2.36") -> Path:
    """A stand-in for Debian's MPICH 4.0.2 (see :data:`MPICH_BYTES`) with a C library
    that names its release as glibc's does."""
    write(root, f"{LIBDIR}/libmpich.so.12.2.2").write_bytes(MPICH_BYTES)
    (root / LIBDIR.lstrip("/") / "libmpich.so.12").symlink_to("libmpich.so.12.2.2")
    libc = f"GNU C Library (Debian GLIBC {glibc}-9) stable release version {glibc}.\0"
    write(root, f"{LIBDIR}/libc.so.6", libc)
    return root


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("host")
    copy_libraries(root)
    return root


def test_open_mpi_found_through_its_links_and_named_by_its_own_bytes(host: Path) -> None:
    side = mpiinfo.side(Tree(host))
    assert side.mpi is not None
    assert (side.mpi.flavour, side.mpi.version) == ("Open MPI", host_version())
    assert side.mpi.soname == "libmpi.so.40"
    assert side.mpi.library.path.startswith(f"{LIBDIR}/libmpi.so.40.")  # the file, not the link
    assert "libopen-pal.so.40" in side.mpi.library.needed
    assert side.mpi.pmi == ("pmix",)
    assert side.glibc is not None and re.fullmatch(r"2\.\d+", side.glibc)


def test_mpich_named_by_its_banner_and_wire_up_strings(tmp_path: Path) -> None:
    """A stand-in file with the strings of Debian's MPICH 4.0.2 library."""
    side = mpiinfo.side(Tree(mpich_root(tmp_path)))
    assert side.mpi is not None
    assert side.mpi.describe() == "MPICH 4.0.2 (libmpich.so.12)"
    assert side.mpi.family == "MPICH"
    assert side.mpi.pmi == ("pmi2", "pmi1")
    assert side.glibc == "2.36"


def test_version_from_the_package_database_when_the_library_hides_it(tmp_path: Path) -> None:
    write(tmp_path, f"{LIBDIR}/libmpi.so.40").write_bytes(b"Open MPI\0no version here\0")
    write(
        tmp_path,
        "/var/lib/dpkg/status",
        "Package: libopenmpi3\nStatus: install ok installed\nVersion: 4.1.2-2\n\n",
    )
    side = mpiinfo.side(Tree(tmp_path))
    assert side.mpi is not None and side.mpi.describe() == "Open MPI 4.1.2 (libmpi.so.40)"


def test_links_out_of_the_image_lead_nowhere(tmp_path: Path) -> None:
    """An image's links to this host's real Open MPI (absolute, climbing with ``..``, and
    its linker cache) resolve inside the image, where nothing is."""
    real = os.path.realpath(f"{LIBDIR}/libmpi.so.40")
    directory = tmp_path / LIBDIR.lstrip("/")
    directory.mkdir(parents=True)
    (directory / "libmpi.so.40").symlink_to(real)
    (directory / "libmpi.so.41").symlink_to("../../../../../../../.." + real)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/ld.so.cache").symlink_to("/etc/ld.so.cache")
    side = mpiinfo.side(Tree(tmp_path))
    assert side == Side(None, None, None)


def test_a_fifo_is_not_opened_and_a_huge_library_is_read_only_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "fifo"
    directory = fifo / LIBDIR.lstrip("/")
    directory.mkdir(parents=True)
    os.mkfifo(directory / "libmpi.so.40")
    with within(5):
        assert mpiinfo.side(Tree(fifo)).mpi is None
    monkeypatch.setattr(mpiinfo, "MAX_LIBRARY", 1 << 20)
    huge = write(tmp_path / "huge", f"{LIBDIR}/libmpi.so.40")
    with open(huge, "wb") as f:
        f.seek(3 << 19)  # sparse: the banner lies past the bound
        f.write(b"Open MPI\0v9.9.9\0")
    side = mpiinfo.side(Tree(tmp_path / "huge"))
    assert side.mpi is not None and side.mpi.flavour == "unknown MPI"


def test_parse_srun_mpi_list() -> None:
    slurm_22 = (
        "MPI plugin types are...\n\tnone\n\tpmi2\n\tpmix\n"
        "specific pmix plugin versions available: pmix_v4\n"
    )
    assert mpicheck.parse_mpi_list(slurm_22) == ("none", "pmi2", "pmix")
    assert mpicheck.parse_mpi_list("srun: mpi/pmix_v3\nsrun: mpi/none\n") == ("pmix", "none")
    assert mpicheck.parse_mpi_list("srun: error: Could not establish a configuration") == ()


def test_srun_list_from_a_stand_in_srun(tmp_path: Path) -> None:
    """A shell script standing in for Slurm's srun (this test has no Slurm daemon)."""
    srun = write(
        tmp_path,
        "/usr/bin/srun",
        "#!/bin/sh\nprintf 'MPI plugin types are...\\n\\tpmi2\\n'\n",
        0o755,
    )
    assert mpicheck.srun_plugins(str(srun)) == (("pmi2",), None)
    broken = write(
        tmp_path, "/bin/srun", "#!/bin/sh\necho 'srun: fatal: no config' >&2\nexit 1\n", 0o755
    )
    assert mpicheck.srun_plugins(str(broken)) == ((), "srun: fatal: no config")


def _launchers(**changes: object) -> Launchers:
    return Launchers("/usr/bin/mpirun", "/usr/bin/srun", ("pmix", "pmi2"))._replace(**changes)


def test_a_different_mpi_under_the_host_mpirun_starts_singletons(
    host: Path, tmp_path: Path
) -> None:
    h = mpiinfo.side(Tree(host))
    image = mpiinfo.side(Tree(mpich_root(tmp_path)))
    verdict = mpicheck.compare(h, _launchers(), image, "mpirun")
    assert not verdict.compatible
    (problem,) = verdict.problems
    assert problem == (
        f"the image has MPICH 4.0.2 (libmpich.so.12); the host launcher is Open MPI"
        f" {host_version()} (libmpi.so.40): ranks will start as singletons (each one rank of 1)"
    )
    assert verdict.bind_refusal is not None and "not ABI-compatible" in verdict.bind_refusal
    # srun wires it up through PMI-2, which this Slurm offers
    verdict = mpicheck.compare(h, _launchers(), image, "srun")
    assert verdict.compatible and "start the ranks with srun --mpi=pmi2" in verdict.notes
    verdict = mpicheck.compare(h, _launchers(srun_mpi=("pmix",)), image, "srun")
    assert not verdict.compatible and "ranks will start as singletons" in verdict.problems[0]


def test_the_same_open_mpi_is_compatible_every_way(host: Path) -> None:
    side = mpiinfo.side(Tree(host))
    for launcher in mpicheck.LAUNCHERS:
        verdict = mpicheck.compare(side, _launchers(), side, launcher)
        assert verdict.compatible and verdict.problems == (), launcher
        assert verdict.bind_refusal is None
    assert "start the ranks with srun --mpi=pmix" in verdict.notes
    host = side._replace(pmix="4.2.2")
    older = mpicheck.compare(host, _launchers(), side._replace(pmix="3.2.3"), "srun")
    assert older.compatible and older.notes[1].startswith("PMIx 4.2.2 on the host and 3.2.3")
    same = mpicheck.compare(host, _launchers(), side._replace(pmix="4.1.0"), "srun")
    assert len(same.notes) == 1


def test_open_mpi_a_major_release_apart_is_refused(host: Path) -> None:
    side = mpiinfo.side(Tree(host))
    assert side.mpi is not None
    old = side._replace(mpi=side.mpi._replace(version="3.1.6"))
    verdict = mpicheck.compare(side, _launchers(), old, "mpirun")
    assert not verdict.compatible and "the same major release" in verdict.problems[0]
    assert verdict.bind_refusal is None  # the host's 4.x can replace an image's 3.x
    newer = side._replace(mpi=side.mpi._replace(version="4.9.0"))
    assert "is older than the image's" in (mpibind.refusal(side, newer) or "")


def test_what_is_missing_is_said(host: Path) -> None:
    side = mpiinfo.side(Tree(host))
    empty = Side(None, None, "2.36")
    verdict = mpicheck.compare(side, _launchers(), empty, "mpirun")
    assert "the image has no MPI library" in verdict.problems[0]
    verdict = mpicheck.compare(side, _launchers(mpirun=None), side, "mpirun")
    assert verdict.problems == (
        "the host has no mpirun on PATH: no host launcher to start the image's ranks",
    )
    verdict = mpicheck.compare(side, _launchers(srun_error="srun: fatal: no config"), side, "srun")
    assert verdict.problems == ("srun cannot say which PMI it offers: srun: fatal: no config",)
    assert mpibind.refusal(side._replace(glibc=None), side._replace(glibc=None)) == (
        "the image has no glibc, which the host's MPI libraries need"
    )


def test_default_launcher() -> None:
    both = _launchers()
    assert mpicheck.default_launcher(both, {}) == "mpirun"
    assert mpicheck.default_launcher(both, {"SLURM_JOB_ID": "7"}) == "srun"
    assert mpicheck.default_launcher(_launchers(mpirun=None), {}) == "srun"
    assert mpicheck.default_launcher(_launchers(srun=None), {"SLURM_JOB_ID": "7"}) == "mpirun"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An image with this host's Open MPI, but for an older hwloc file and no libevent."""
    root = tmp_path / "image"
    copy_libraries(root, ("libmpi.so.40", "libopen-rte.so.40", "libopen-pal.so.40", "libc.so.6"))
    hwloc = os.path.realpath(f"{LIBDIR}/libhwloc.so.15")
    directory = root / LIBDIR.lstrip("/")
    shutil.copyfile(hwloc, directory / "libhwloc.so.15.0.0")
    (directory / "libhwloc.so.15").symlink_to("libhwloc.so.15.0.0")
    return root


def test_host_bind_replaces_the_image_copies_and_adds_what_it_lacks(
    host: Path, image: Path
) -> None:
    components = host / LIBDIR.lstrip("/") / "openmpi/lib/openmpi3"
    components.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        f"{LIBDIR}/openmpi/lib/openmpi3/mca_btl_self.so", components / "mca_btl_self.so"
    )
    h, i = Tree(host), Tree(image)
    result = mpibind.bindings(h, mpiinfo.side(h), i, mpiinfo.side(i), {"LD_LIBRARY_PATH": "/opt/x"})
    mounts = {m.target: m for m in result["mounts"]}
    assert all(m.readonly and m.transient for m in mounts.values())
    libmpi = mpiinfo.side(i).mpi
    assert libmpi is not None
    assert mounts[libmpi.library.path].source == f"{host}{mpiinfo.side(h).mpi.library.path}"  # type: ignore[union-attr]
    hwloc = os.path.basename(os.path.realpath(f"{LIBDIR}/libhwloc.so.15"))
    assert mounts[f"{LIBDIR}/libhwloc.so.15.0.0"].source == f"{host}{LIBDIR}/{hwloc}"  # newer
    assert f"{mpibind.LIB}/libevent_core-2.1.so.7" in mounts  # lacking
    assert mounts[f"{LIBDIR}/openmpi"].source == f"{host}{LIBDIR}/openmpi"
    assert not any("libc.so" in t for t in mounts)
    assert result["env"] == {"LD_LIBRARY_PATH": f"{mpibind.LIB}:/opt/x"}


def test_host_bind_refused_for_an_older_glibc_and_another_mpi(host: Path, tmp_path: Path) -> None:
    h = Tree(host)
    old = mpich_root(tmp_path / "mpich", glibc="2.17")
    with pytest.raises(DeviceError, match=r"^--mpi=host: the image has MPICH 4\.0\.2 .*not ABI"):
        mpibind.bindings(h, mpiinfo.side(h), Tree(old), mpiinfo.side(Tree(old)), {})
    image = tmp_path / "old-glibc"
    copy_libraries(image, ("libmpi.so.40",))
    write(image, f"{LIBDIR}/libc.so.6", "GNU C Library stable release version 2.17.\0")
    side = mpiinfo.side(Tree(image))
    assert side.glibc == "2.17"
    with pytest.raises(DeviceError, match=r"need glibc 2\.\d+; the image has glibc 2\.17$"):
        mpibind.bindings(h, mpiinfo.side(h), Tree(image), side, {})
