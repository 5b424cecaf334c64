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

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

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
    return debian.cached_tar(rootfs_tar_path(), "tests/support/mpi.py", _build)


def _build(scratch: Path, out: BinaryIO) -> None:
    """debootstrap with the MPI runtime, the program compiled into the root, then the tar."""
    root = scratch / "root"
    debian.debootstrap(root, PACKAGES)
    compile_program(root / PROGRAM.lstrip("/"))
    debian.write_tar(root, out)


def compile_program(destination: Path) -> None:
    """The host's ``mpicc`` (Debian's ``libopenmpi-dev``): the image's Open MPI is the same
    package, so what links against the host's ``libmpi.so.40`` runs against the image's."""
    mpicc = shutil.which("mpicc", path=debian.search_path())
    if mpicc is None:
        raise RuntimeError("mpicc not found: install the Debian package libopenmpi-dev")
    destination.parent.mkdir(parents=True, exist_ok=True)
    debian.run_tool([mpicc, "-O2", "-o", str(destination), str(SOURCE)])
    destination.chmod(0o755)


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
    return debian.script_main(rootfs_tar_path(), _build, "debootstrap needs it")


if __name__ == "__main__":
    sys.exit(main())
