"""Which libfakechroot serves a container: it must fit the container's C library.

libfakechroot is preloaded into the container's programs, so it is linked against *their*
glibc, not the host's. Two bounds decide whether a build fits a container:

* its floor: the newest ``GLIBC_2.N`` version it needs (Debian bookworm's build needs 2.34);
  an older C library cannot load it at all;
* its ceiling: the glibc it was built for. A newer C library adds entry points (``statx``,
  ``openat2``, ``fstatat`` as a real symbol in 2.33) that an older libfakechroot does not wrap,
  and calls through them would reach the host's files unseen. The host's Debian build was made
  for the host's glibc, which is its ceiling; a configured build is trusted up to any release
  (the site chose it for its images) unless its setting names a ceiling.

Candidates, in order: the host's build from the Debian package ``fakechroot``, then the
configured ones (``UCORE_FAKECHROOT_SO`` or ``library`` in the ``[fakechroot]`` section of
ucore.conf: paths separated by ``:``, each optionally followed by ``@2.39``, its ceiling).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple, Optional

from ucore_fakechroot import elfinfo, rootinfo

HOW_TO_GET = (
    "install the Debian/Ubuntu package fakechroot, or set UCORE_FAKECHROOT_SO to a"
    " libfakechroot.so built for the image's glibc"
)
_VERSION = re.compile(rb"\0(\d+\.\d+(?:\.\d+)?)\0")


class Library(NamedTuple):
    path: str
    #: Where it came from, for messages and ``ucore info``.
    origin: str
    floor: tuple[int, int]
    ceiling: Optional[tuple[int, int]]

    def serves(self, glibc: tuple[int, int]) -> bool:
        return glibc >= self.floor and (self.ceiling is None or glibc <= self.ceiling)

    def describe(self) -> str:
        top = elfinfo.dotted(self.ceiling) if self.ceiling else "any newer"
        return f"{self.path} ({self.origin}; glibc {elfinfo.dotted(self.floor)} to {top})"


def host_glibc() -> Optional[tuple[int, int]]:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    found = re.search(r"(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def host_paths() -> list[str]:
    arch = rootinfo.multiarch()
    return [
        f"/usr/lib/{arch}/fakechroot/libfakechroot.so",
        "/usr/lib64/fakechroot/libfakechroot.so",
        "/usr/lib/fakechroot/libfakechroot.so",
    ]


def candidates(configured: Optional[str]) -> tuple[list[Library], list[str]]:
    """(usable libraries in order of preference, one line for each unusable one)."""
    found: list[Library] = []
    problems: list[str] = []
    for path in host_paths():
        if os.path.isfile(path):
            floor = _floor(path)
            if floor is None:
                problems.append(f"{path}: not a libfakechroot this machine can read")
            else:
                found.append(Library(path, _host_origin(path), floor, host_glibc()))
            break
    for entry in (configured or "").split(":"):
        if not entry.strip():
            continue
        path, _, top = entry.strip().partition("@")
        path = os.path.abspath(os.path.expanduser(path))
        ceiling = _parse(top) if top else None
        floor = _floor(path) if os.path.isfile(path) else None
        if floor is None:
            problems.append(f"the configured libfakechroot {path} is not a readable library")
        elif top and ceiling is None:
            problems.append(f"the configured libfakechroot {entry}: expected PATH@2.N")
        else:
            found.append(Library(path, "configured", floor, ceiling))
    return found, problems


def choose(libraries: list[Library], glibc: tuple[int, int]) -> Library:
    """The first library serving ``glibc``, else a :class:`~rootinfo.Refusal` naming what
    would work."""
    for lib in libraries:
        if lib.serves(glibc):
            return lib
    if not libraries:
        raise rootinfo.Refusal(f"no libfakechroot on this host: {HOW_TO_GET}")
    have = "; ".join(lib.describe() for lib in libraries)
    raise rootinfo.Refusal(
        f"the image's glibc {elfinfo.dotted(glibc)} is served by no libfakechroot here"
        f" ({have}): set UCORE_FAKECHROOT_SO to a libfakechroot.so built for glibc"
        f" {elfinfo.dotted(glibc)} (the fakechroot package of the image's own distribution),"
        " or use proot (P1) or runc (R1)"
    )


def _floor(path: str) -> Optional[tuple[int, int]]:
    head = elfinfo.header(path)
    if not elfinfo.is_elf(head):
        return None
    names = elfinfo.glibc_names(path)
    return max(names) if names else (2, 0)


def _parse(text: str) -> Optional[tuple[int, int]]:
    found = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    return (int(found.group(1)), int(found.group(2))) if found else None


def _host_origin(path: str) -> str:
    version = _version(path)
    return "the host's fakechroot package" + (f" {version}" if version else "")


def _version(path: str) -> Optional[str]:
    """fakechroot's own version, which its library carries as a string (``2.20.1``)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    found = _VERSION.search(data)
    return found.group(1).decode() if found else None
