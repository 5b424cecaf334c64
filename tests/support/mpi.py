"""The MPI test image: Debian bookworm with Debian's Open MPI runtime and a two-rank program.

The hybrid model runs the host's launcher (``mpirun``, ``srun --mpi=pmix``) and the MPI library
inside the image, so the image carries the same Open MPI as the host (Debian 12's 4.1.4, with
its external PMIx 4.2) and a program built against it: ``/usr/local/bin/mpi-ring``, compiled
from ``mpi_ring.c`` beside this module with the host's ``mpicc`` (the same Debian, the same
Open MPI: the binary needs only ``libmpi.so.40``, which ``libopenmpi3`` gives the image). The
program is built by the harness, never committed as a binary.

How it is made (Debian 12, debootstrap 1.0.128+nmu2+deb12u2, amd64)::

    debootstrap --variant=minbase --include=libopenmpi3,openmpi-common bookworm DIR MIRROR

``libopenmpi3`` pulls in PMIx, hwloc, UCX, libfabric and the verbs libraries; ``openmpi-common``
holds the help texts Open MPI prints its errors from (without them a failure says only that a
help file is missing). The tar is made as :mod:`debian`'s is (same leaving-out, one mtime,
sorted entries), cached in ``$UCORE_TEST_CACHE`` by ``python3 tests/support/mpi.py`` as root
(``tests/setup-host.sh`` runs it), and only read by the unprivileged test run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__:
    from . import debian
else:  # run as a script, before ucore is installed: this directory is sys.path[0]
    import debian  # type: ignore[no-redef]

if TYPE_CHECKING:
    from ucore.testing.images import Image

#: Bump whenever what goes into the tar changes (packages, program, leaving-out).
RECIPE = 1
PACKAGES = ("libopenmpi3", "openmpi-common")
SOURCE = Path(__file__).with_name("mpi_ring.c")
#: Where the program lies in the image.
PROGRAM = "/usr/local/bin/mpi-ring"

MPI_CONFIG: dict[str, Any] = {
    "Env": [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "UCORE_TEST_IMAGE=mpi",
    ],
    "Cmd": [PROGRAM],
    "WorkingDir": "/",
}


def rootfs_tar_path() -> Path:
    name = f"mpi-{debian.SUITE}-{debian.VARIANT}-{debian.architecture()}-r{RECIPE}.tar"
    return debian.cache_dir() / name


def mpi_rootfs_tar() -> Path:
    """The cached tar, built first when missing and this is root.

    :raises debian.CacheMissing: missing, and not root (the MPI tests must fail then).
    """
    path = rootfs_tar_path()
    if path.is_file():
        return path
    if os.geteuid() != 0:
        raise debian.CacheMissing(
            f"{path} is missing; build it as root with `python3 tests/support/mpi.py`"
            f" (tests/setup-host.sh does; {debian.CACHE_ENV} names the cache directory)"
        )
    return build_rootfs_tar()


def build_rootfs_tar() -> Path:
    """debootstrap with the MPI runtime, compile the program into the root, write the tar
    beside its final name and rename it there (one builder at a time, as in :mod:`debian`)."""
    path = rootfs_tar_path()
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    with open(directory / ".build-mpi.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        for stale in directory.glob(".build-mpi-*"):
            debian._remove_tree(stale)
        scratch = Path(tempfile.mkdtemp(prefix=".build-mpi-", dir=directory))
        try:
            root = scratch / "root"
            _debootstrap(root)
            compile_program(root / PROGRAM.lstrip("/"))
            tmp = scratch / "rootfs.tar"
            with open(tmp, "wb") as out:
                debian.write_tar(root, out)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o644)
            os.replace(tmp, path)
        finally:
            debian._remove_tree(scratch)
    return path


def _search_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])


def _debootstrap(target: Path) -> None:
    program = shutil.which("debootstrap", path=_search_path())
    if program is None:
        raise RuntimeError("debootstrap not found: install the Debian package debootstrap")
    argv = [
        program,
        f"--variant={debian.VARIANT}",
        f"--include={','.join(PACKAGES)}",
        debian.SUITE,
        str(target),
        debian.MIRROR,
    ]
    _run(argv, target / "debootstrap" / "debootstrap.log")


def compile_program(destination: Path) -> None:
    """The host's ``mpicc`` (Debian's ``libopenmpi-dev``): the image's Open MPI is the same
    package, so what links against the host's ``libmpi.so.40`` runs against the image's."""
    mpicc = shutil.which("mpicc", path=_search_path())
    if mpicc is None:
        raise RuntimeError("mpicc not found: install the Debian package libopenmpi-dev")
    destination.parent.mkdir(parents=True, exist_ok=True)
    _run([mpicc, "-O2", "-o", str(destination), str(SOURCE)])
    destination.chmod(0o755)


def _run(argv: list[str], log: Path | None = None) -> None:
    result = subprocess.run(
        argv,
        env={
            **os.environ,
            "PATH": _search_path(),
            "LC_ALL": "C",
            "DEBIAN_FRONTEND": "noninteractive",
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        detail = log.read_text(errors="replace")[-3000:] if log and log.is_file() else result.stderr
        raise RuntimeError(f"{' '.join(argv)}: exit status {result.returncode}\n{detail}")


def mpi_image(tar: Path) -> Image:
    """A single-layer, uncompressed image of the tar with :data:`MPI_CONFIG`."""
    from ucore.testing.images import build_image, make_layer

    return build_image(
        [make_layer(tar.read_bytes(), "none")],
        config=MPI_CONFIG,
        history=[
            f"debootstrap --variant={debian.VARIANT} --include={','.join(PACKAGES)}"
            f" {debian.SUITE} / {debian.MIRROR}",
            f"mpicc -O2 -o {PROGRAM} mpi_ring.c",
        ],
    )


def main() -> int:
    """Build the cache (as root) and print its path."""
    if os.geteuid() != 0:
        print(f"{sys.argv[0]}: run as root (debootstrap needs it)", file=sys.stderr)
        return 2
    print(build_rootfs_tar())
    return 0


if __name__ == "__main__":
    sys.exit(main())
