"""An image with the wrong MPI for this host: the Debian test image plus Debian's MPICH library.

The host runs Debian's Open MPI (``libmpi.so.40``); this image holds MPICH 4.0
(``libmpich.so.12``, the MPICH ABI), which ``ucore mpi check`` must call a mismatch and
``run --mpi=host`` must refuse to replace. Neither runs the library, so the image carries only
the files of Debian's ``libmpich12`` package (without its dependencies) as a second layer over
:mod:`debian`'s root: real MPICH bytes, whose identification strings and ELF headers are what
the check reads.

Made as root with ``apt-get download libmpich12`` and ``dpkg-deb -x`` (the network, like
debootstrap), then cached as a deterministic tar in ``$UCORE_TEST_CACHE`` beside the Debian
root; the unprivileged test run only reads it. ``python3 tests/support/mpich.py`` builds it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if __package__:
    from . import debian
else:  # run as a script, before ucore is installed: this directory is sys.path[0]
    import debian  # type: ignore[no-redef]

if TYPE_CHECKING:
    from ucore.testing.images import Image

#: Bump whenever what goes into the tar changes.
RECIPE = 1
PACKAGE = "libmpich12"


def layer_tar_path() -> Path:
    return debian.cache_dir() / f"{PACKAGE}-{debian.SUITE}-{debian.architecture()}-r{RECIPE}.tar"


def mpich_layer_tar() -> Path:
    """The cached tar of the package's files, built first when missing and this is root.

    :raises debian.CacheMissing: missing, and not root.
    """
    return debian.cached_tar(layer_tar_path(), "tests/support/mpich.py", _build)


def _build(scratch: Path, out: BinaryIO) -> None:
    scratch.chmod(0o755)  # apt's download sandbox user writes here
    debian.run_tool(["apt-get", "download", "-q", PACKAGE], cwd=scratch)
    (package,) = scratch.glob(f"{PACKAGE}_*.deb")
    root = scratch / "root"
    debian.run_tool(["dpkg-deb", "-x", str(package), str(root)], cwd=scratch)
    debian.write_tar(root, out)  # leaves out usr/share/doc, as the base does


def mpich_image(base: Path, layer: Path) -> Image:
    """The Debian root (``base``) with the MPICH files over it: two uncompressed layers."""
    from ucore.testing.images import build_image, make_layer

    return build_image(
        [make_layer(base.read_bytes(), "none"), make_layer(layer.read_bytes(), "none")],
        config=debian.DEBIAN_CONFIG,
        history=[
            f"debootstrap --variant={debian.VARIANT} {debian.SUITE} / {debian.MIRROR}",
            f"apt-get download {PACKAGE} && dpkg-deb -x {PACKAGE}_*.deb /",
        ],
    )


def main() -> int:
    return debian.script_main(layer_tar_path(), _build, "apt-get download needs the package lists")


if __name__ == "__main__":
    sys.exit(main())
