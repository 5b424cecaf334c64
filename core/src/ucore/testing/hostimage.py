"""A glibc image made from this host's own programs and libraries, for engines that need one.

Some engines (Fakechroot) run only dynamically linked programs, through the image's loader. A
test image for them must bring glibc; this repository's own suite uses a Debian root built with
debootstrap, which needs root and the network. An engine's author has neither in CI, but has a
glibc host: its shell, coreutils, grep and sed (from ``/bin`` or ``/usr/bin``), the libraries
``ldd`` names for them and the loader make a small image (about 2 MiB compressed) that runs
wherever the host's programs run. Nothing is downloaded, nothing needs root, and the same host
gives the same digest.

Every path keeps the host's layout, links included (``/bin/sh`` -> ``dash``, a merged ``/usr``,
``/lib64/ld-linux-x86-64.so.2`` as an absolute link), as a distribution image has them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import PurePosixPath
from typing import Any

from ucore.testing.images import DEFAULT_PATH, Image, LayerBuilder, build_image, make_layer

#: The programs the image holds, each found on the host: what the engine conformance
#: suite runs (:mod:`ucore.testing.conformance`), plus a few that shell scripts expect.
PROGRAMS = (
    "sh", "cat", "echo", "env", "printenv", "id", "pwd", "sleep", "true", "false", "test",
    "ls", "mkdir", "rm", "touch", "ln", "stat", "readlink", "chmod", "cp", "mv", "head", "wc",
    "uname", "whoami", "grep", "sed",
)  # fmt: skip

GLIBC_CONFIG: dict[str, Any] = {
    "Env": [f"PATH={DEFAULT_PATH}", "UCORE_TEST_IMAGE=glibc"],
    "Cmd": ["sh"],
    "WorkingDir": "/",
    "Labels": {"org.opencontainers.image.title": "ucore test glibc (from the host)"},
}

_DIRS = (
    ("etc", 0o755), ("root", 0o700), ("home", 0o755), ("tmp", 0o1777), ("var/tmp", 0o1777),
    ("dev", 0o755), ("proc", 0o555), ("sys", 0o555),
)  # fmt: skip
#: Where programs are looked for: ``/bin`` first, so that ``/bin/sh`` (the account files' shell,
#: every script's ``#!``) exists in the image, through the host's own ``/bin`` link if it has one.
_SEARCH = "/bin:/usr/bin"
#: Links followed while copying one path; more means a loop.
_MAX_LINKS = 40


def glibc_layer_tar(programs: tuple[str, ...] = PROGRAMS) -> bytes:
    """The root filesystem: ``programs`` from the host, their libraries, the loader, the NSS
    module for local accounts (which glibc before 2.34 loads at run time), and account files
    with ``root`` and ``nobody``."""
    layer = LayerBuilder()
    for d, mode in _DIRS:
        layer.dir(d, mode)
    layer.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    layer.file("etc/group", "root:x:0:\nnogroup:x:65534:\n")
    layer.file("etc/nsswitch.conf", "passwd: files\ngroup: files\n")
    layer.file("etc/hostname", "glibc\n")
    copied: set[str] = set()
    libraries: set[str] = set()
    for name in programs:
        path = shutil.which(name, path=_SEARCH)
        if path is None:
            raise FileNotFoundError(f"the glibc test image needs {name!r}, not found on the host")
        _copy(layer, path, copied)
        libraries.update(_libraries(path))
    for library in sorted(libraries):
        _copy(layer, library, copied)
        if PurePosixPath(library).name.startswith("libc.so"):
            for nss in sorted(
                glob.glob(os.path.join(os.path.dirname(library), "libnss_files.so*"))
            ):
                _copy(layer, nss, copied)
    return layer.tar()


def glibc_image(programs: tuple[str, ...] = PROGRAMS) -> Image:
    """Single-layer image of :func:`glibc_layer_tar` with :data:`GLIBC_CONFIG` (``Cmd ["sh"]``)."""
    layer = make_layer(glibc_layer_tar(programs), "gzip")
    return build_image([layer], config=GLIBC_CONFIG, history=["host programs and glibc"])


def _libraries(program: str) -> list[str]:
    """The shared objects the loader maps for ``program`` (``ldd``), the loader included."""
    # ldd fails for a static program, which needs nothing: its output then names no path.
    out = subprocess.run(
        ["ldd", program], capture_output=True, text=True, env={"LC_ALL": "C"}
    ).stdout
    found = []
    for line in out.splitlines():
        _, arrow, rest = line.partition("=>")
        path = (rest if arrow else line).strip().split(" (", 1)[0].strip()
        if path.startswith("/"):
            found.append(path)
    return found


def _copy(layer: LayerBuilder, path: str, copied: set[str], links: int = 0) -> None:
    """Add the host's ``path`` to the layer at the same place, adding each link met on the way
    (a directory link such as ``/lib`` -> ``usr/lib`` too) and what it points to."""
    if links > _MAX_LINKS:
        raise OSError(f"too many levels of symbolic links at {path}")
    path = os.path.normpath(path)
    parts = PurePosixPath(path).parts[1:]
    for i in range(len(parts)):
        here = "/" + "/".join(parts[: i + 1])
        if not os.path.islink(here):
            continue
        target = os.readlink(here)
        if here not in copied:
            copied.add(here)
            layer.symlink(here, target)
        rest = parts[i + 1 :]
        resolved = os.path.join(os.path.dirname(here), target, *rest)
        _copy(layer, resolved, copied, links + 1)
        return
    if path not in copied:
        copied.add(path)
        with open(path, "rb") as f:
            layer.file(path, f.read(), os.stat(path).st_mode & 0o7777)
