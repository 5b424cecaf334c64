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

import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

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
    path = layer_tar_path()
    if path.is_file():
        return path
    if os.geteuid() != 0:
        raise debian.CacheMissing(
            f"{path} is missing; build it as root with `python3 tests/support/mpich.py`"
            f" ({debian.CACHE_ENV} names the cache directory)"
        )
    return build_layer_tar()


def build_layer_tar() -> Path:
    path = layer_tar_path()
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    with open(directory / ".build-mpich.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        scratch = Path(tempfile.mkdtemp(prefix=".build-mpich-", dir=directory))
        try:
            scratch.chmod(0o755)  # apt's download sandbox user writes here
            _run(["apt-get", "download", "-q", PACKAGE], scratch)
            (package,) = scratch.glob(f"{PACKAGE}_*.deb")
            root = scratch / "root"
            _run(["dpkg-deb", "-x", str(package), str(root)], scratch)
            tmp = scratch / "layer.tar"
            with open(tmp, "wb") as out:
                debian.write_tar(root, out)  # leaves out usr/share/doc, as the base does
            tmp.chmod(0o644)
            os.replace(tmp, path)
        finally:
            debian._remove_tree(scratch)
    return path


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit status {result.returncode}\n{result.stderr}")


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
    """Build the cache (as root) and print its path."""
    if os.geteuid() != 0:
        print(
            f"{sys.argv[0]}: run as root (apt-get download needs the package lists)",
            file=sys.stderr,
        )
        return 2
    print(build_layer_tar())
    return 0


if __name__ == "__main__":
    sys.exit(main())
