"""A real glibc root filesystem for the tests: Debian bookworm from ``debootstrap``.

The busybox test image is static and has no dynamic loader, which is all that most engines
need; Fakechroot's modes (F1-F4) preload a library into glibc's loader and rewrite the paths
of the image's ELF files and absolute symlinks, so they need an image with a real ``ld.so``,
``libc.so.6`` and the absolute links a distribution ships (``lib64/ld-linux-x86-64.so.2`` ->
``/lib/x86_64-linux-gnu/...``, ``etc/alternatives/*``), kept exactly as ``debootstrap`` made them.

How it is made (measured on Debian 12 with debootstrap 1.0.128+nmu2+deb12u2, amd64)::

    debootstrap --variant=minbase bookworm DIR http://deb.debian.org/debian

takes about 25 s and 210 MB; what no test needs (documentation, manuals, locales, time zones,
apt's package lists and downloaded packages, logs) is left out of the tar, as are device nodes
(an image must never carry them: ``/dev``, ``/proc`` and ``/sys`` are empty directories).
The tar is deterministic (sorted entries, one mtime, owners by number but for root): two
debootstrap runs a minute apart gave the same bytes. Its content follows the mirror, though, so
a rebuild after a bookworm point release gives other digests.

debootstrap needs root, and the unprivileged test run must not download anything: the tar is
built once as root into a cache (``$UCORE_TEST_CACHE``, default ``/var/cache/ucore-tests``)
that every user can read. ``tests/setup-host.sh`` builds it with ``python3 tests/support/
debian.py``; a test session run as root builds it if it is missing, one run as another user
fails with that command. This module uses nothing but the standard library at import time, so
the script runs with the system's Python before ucore is installed anywhere.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Optional

if TYPE_CHECKING:
    from ucore.testing.images import Image

CACHE_ENV = "UCORE_TEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/ucore-tests")

SUITE = "bookworm"
VARIANT = "minbase"
MIRROR = "http://deb.debian.org/debian"
#: Part of the cache file's name: bump it whenever what goes into the tar changes, so that a
#: cache built by an older recipe is never taken for the new one.
RECIPE = 2

#: The one mtime of every entry (as in ``ucore.testing.images``): the tar's bytes must not
#: depend on when debootstrap ran.
EPOCH = 1_700_000_000

#: Left out with everything below them.
DROPPED = frozenset(
    {
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/zoneinfo",  # /etc/localtime then dangles: glibc reads that as UTC
        "usr/share/lintian",
    }
)
#: Kept as empty directories: the kernel's and the engines' mount points, and what would only
#: record when and from where debootstrap ran (ldconfig's aux-cache holds the inodes and
#: ctimes of the libraries: the one file that differed between two builds; ldconfig remakes it).
EMPTIED = frozenset(
    {
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "var/log",
        "var/cache/apt",
        "var/cache/ldconfig",
        "var/lib/apt/lists",
    }
)

#: The image's config: what the conformance suite checks an engine applies.
DEBIAN_CONFIG: dict[str, Any] = {
    "Env": [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "UCORE_TEST_IMAGE=debian",
    ],
    "Cmd": ["sh"],
    "WorkingDir": "/",
}


class CacheMissing(RuntimeError):
    """The tar is not built and this user cannot build it (debootstrap needs root)."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def architecture() -> str:
    """Debian's name for this host's architecture (debootstrap's default target)."""
    try:
        out = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        machine = platform.machine().lower()
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def rootfs_tar_path() -> Path:
    return cache_dir() / f"debian-{SUITE}-{VARIANT}-{architecture()}-r{RECIPE}.tar"


def debian_rootfs_tar() -> Path:
    """The cached tar of the root filesystem, built first when missing and this is root.

    :raises CacheMissing: missing, and not root (a test must fail then, not skip: a suite
        that silently leaves out the Fakechroot engines would pass without testing them).
    """
    return cached_tar(rootfs_tar_path(), "tests/support/debian.py", _build)


def _build(scratch: Path, out: BinaryIO) -> None:
    debootstrap(scratch / "root")
    write_tar(scratch / "root", out)


def cached_tar(path: Path, script: str, build: Callable[[Path, BinaryIO], None]) -> Path:
    """The tar at ``path`` in the cache, built first by :func:`build_cached` when missing and
    this is root; ``script`` is the command that builds it, named in the error otherwise."""
    if path.is_file():
        return path
    if os.geteuid() != 0:
        raise CacheMissing(
            f"{path} is missing; build it as root with `python3 {script}`"
            f" (tests/setup-host.sh does; {CACHE_ENV} names the cache directory,"
            f" default {DEFAULT_CACHE})"
        )
    return build_cached(path, build)


def build_cached(path: Path, build: Callable[[Path, BinaryIO], None]) -> Path:
    """``build(scratch, out)`` writes the tar on ``out``, with a scratch directory of the
    cache to work in; the tar is written beside the final name and renamed there, so that a
    session reading the cache never sees half a file. One builder of a tar at a time (a lock
    file of its own); a second one waits and then finds the tar made."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # the unprivileged run reads it
    stem = path.name.split("-")[0]
    with open(directory / f".build-{stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        for stale in directory.glob(f".build-{stem}-*"):  # what a killed build left
            if stale.is_dir():
                _remove_tree(stale)
        scratch = Path(tempfile.mkdtemp(prefix=f".build-{stem}-", dir=directory))
        try:
            tmp = scratch / "image.tar"
            with open(tmp, "wb") as out:
                build(scratch, out)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o644)
            os.replace(tmp, path)
        finally:
            _remove_tree(scratch)
    return path


def search_path() -> str:
    """``PATH`` with the system directories, where ``debootstrap`` and ``mpicc`` lie."""
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])


def run_tool(argv: list[str], log: Optional[Path] = None, cwd: Optional[Path] = None) -> None:
    """Run a build step; RuntimeError with the end of ``log`` (or of its stderr) if it fails."""
    result = subprocess.run(
        argv,
        cwd=cwd,
        env={
            **os.environ,
            "PATH": search_path(),
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


def debootstrap(target: Path, include: Sequence[str] = (), suite: str = SUITE) -> None:
    """``debootstrap --variant=minbase [--include=...] SUITE TARGET MIRROR``; ``suite`` is
    bookworm but for the root that proves ucore runs on an older glibc (``bullseye.py``)."""
    program = shutil.which("debootstrap", path=search_path())
    if program is None:
        raise RuntimeError("debootstrap not found: install the Debian package debootstrap")
    argv = [program, f"--variant={VARIANT}"]
    if include:
        argv.append(f"--include={','.join(include)}")
    run_tool([*argv, suite, str(target), MIRROR], target / "debootstrap" / "debootstrap.log")


def script_main(path: Path, build: Callable[[Path, BinaryIO], None], why: str) -> int:
    """A builder module run as a script: build its cache (as root) and print its path."""
    if os.geteuid() != 0:
        print(f"{sys.argv[0]}: run as root ({why})", file=sys.stderr)
        return 2
    print(build_cached(path, build))
    return 0


def _remove_tree(path: Path) -> None:
    """``rm --one-file-system``: a build killed inside debootstrap can leave the host's /proc
    mounted in the tree, which must not be emptied with it."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _entries(root: Path, relative: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry below ``root`` in sorted order (a stable tar), less :data:`DROPPED` and
    what is inside :data:`EMPTIED`; (path relative to the root, entry)."""
    with os.scandir(root / relative if relative else root) as it:
        found = sorted(it, key=lambda e: e.name)
    for entry in found:
        name = f"{relative}/{entry.name}" if relative else entry.name
        if name in DROPPED:
            continue
        yield name, entry
        if entry.is_dir(follow_symlinks=False) and name not in EMPTIED:
            yield from _entries(root, name)


def write_tar(root: Path, out: Any) -> None:
    """The tree under ``root`` as an uncompressed tar on the binary file ``out``: directories,
    regular files (hardlinks as links), symlinks exactly as they are; nothing else (device
    nodes, FIFOs and sockets are left out)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, entry in _entries(root):
            if not (
                entry.is_dir(follow_symlinks=False)
                or entry.is_file(follow_symlinks=False)
                or entry.is_symlink()
            ):
                continue
            info = archive.gettarinfo(entry.path, arcname=name)
            info.mtime = EPOCH
            info.uname = "root" if info.uid == 0 else ""
            info.gname = "root" if info.gid == 0 else ""
            if info.isreg():
                with open(entry.path, "rb") as data:
                    archive.addfile(info, data)
            else:
                archive.addfile(info)


def debian_image(tar: Path, compression: str = "none") -> Image:
    """A single-layer image of the tar with :data:`DEBIAN_CONFIG`.

    Uncompressed by default: gzip makes the 75 MB layer 28 MB, but costs more to make than
    it saves over loopback. Measured build + push + pull + create: 1.2 s uncompressed, 4.0 s
    gzip (2.9 s of it compressing).
    """
    # Imported here: the module's script entry runs before ucore is installed.
    from ucore.testing.images import build_image, make_layer

    layer = make_layer(tar.read_bytes(), compression)
    return build_image(
        [layer],
        config=DEBIAN_CONFIG,
        history=[f"debootstrap --variant={VARIANT} {SUITE} / {MIRROR}"],
    )


def main() -> int:
    return script_main(rootfs_tar_path(), _build, "debootstrap needs it")


if __name__ == "__main__":
    sys.exit(main())
