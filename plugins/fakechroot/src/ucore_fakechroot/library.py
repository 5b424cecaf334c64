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

Candidates, in order: the configured ones (``UCORE_FAKECHROOT_SO`` or ``library`` in the
``[fakechroot]`` section of ucore.conf: paths separated by ``:``, each optionally followed by
``@2.39``, its ceiling), then the builds the ucore-fakechroot wheel carries (Debian's, one per
suite, each with the glibc of its suite as its ceiling: see ``tools/carry.py``), then the host's
build from the Debian package ``libfakechroot``. The first that serves the image's glibc is
used, so a site's choice wins, and the carried builds cover images older and newer than the
host's one build.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple, Optional

from ucore.plugins.carried import Carried
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


def candidates(
    configured: Optional[str], memo: Optional[Path] = None, carried: Optional[Carried] = None
) -> tuple[list[Library], list[str]]:
    """(usable libraries in order of preference, one line for each unusable one). What was
    read of each library is remembered in ``memo`` (a JSON file) by the file's identity:
    every run with an F mode asks, and reading the libraries costs milliseconds. ``carried``
    defaults to what the wheel carries beside this module."""
    found: list[Library] = []
    problems: list[str] = []
    facts = _Facts(memo)
    for entry in (configured or "").split(":"):
        if not entry.strip():
            continue
        path, _, top = entry.strip().partition("@")
        path = os.path.abspath(os.path.expanduser(path))
        ceiling = _parse(top) if top else None
        floor = facts.of(path)[0] if os.path.isfile(path) else None
        if floor is None:
            problems.append(f"the configured libfakechroot {path} is not a readable library")
        elif top and ceiling is None:
            problems.append(f"the configured libfakechroot {entry}: expected PATH@2.N")
        else:
            found.append(Library(path, "configured", floor, ceiling))
    if carried is None:
        from ucore.plugins import carried as carried_files

        carried = carried_files.load(__file__)
    if carried is not None:
        for package in carried.packages():
            for relative in package.get("files", {}):
                lib = carried.path(relative)
                if not lib or os.path.basename(lib) != "libfakechroot.so":
                    continue
                floor = facts.of(lib)[0]
                ceiling = _parse(str(package.get("suite_glibc", "")))
                if floor is None or ceiling is None:
                    problems.append(f"{lib}: a carried libfakechroot this machine cannot read")
                else:
                    found.append(Library(lib, carried.origin(relative), floor, ceiling))
    for path in host_paths():
        if os.path.isfile(path):
            floor, version = facts.of(path)
            if floor is None:
                problems.append(f"{path}: not a libfakechroot this machine can read")
            else:
                origin = "the host's fakechroot package" + (f" {version}" if version else "")
                found.append(Library(path, origin, floor, host_glibc()))
            break
    facts.save()
    return found, problems


def floor_of(path: str, memo: Optional[Path] = None) -> Optional[tuple[int, int]]:
    """The newest glibc version a preloaded library (libfakeroot too) needs."""
    facts = _Facts(memo)
    floor = facts.of(path)[0]
    facts.save()
    return floor


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


class _Facts:
    """Floor and version of library files, remembered by (path, inode, size, mtime)."""

    def __init__(self, memo: Optional[Path]) -> None:
        import json

        self.memo = memo
        self.known: dict[str, list[object]] = {}
        self.changed = False
        if memo is not None:
            try:
                self.known = dict(json.loads(memo.read_text()))
            except (OSError, ValueError, TypeError):
                self.known = {}

    def of(self, path: str) -> tuple[Optional[tuple[int, int]], Optional[str]]:
        try:
            st = os.stat(path)
        except OSError:
            return None, None
        key = f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        entry = self.known.get(key)
        if isinstance(entry, list) and len(entry) == 2:
            low, version = entry
            floor = (int(low[0]), int(low[1])) if isinstance(low, list) and len(low) == 2 else None
            return floor, (str(version) if version else None)
        floor, version = _floor(path), _version(path)
        self.known = {k: v for k, v in self.known.items() if not k.startswith(path + ":")}
        self.known[key] = [list(floor) if floor else None, version]
        self.changed = True
        return floor, version

    def save(self) -> None:
        if self.memo is None or not self.changed:
            return
        import json

        try:
            self.memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.memo.with_name(f".{self.memo.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.known))
            os.replace(tmp, self.memo)
        except OSError:
            pass  # a store shared read-only: read again next time


def _version(path: str) -> Optional[str]:
    """fakechroot's own version, which its library carries as a string (``2.20.1``)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    found = _VERSION.search(data)
    return found.group(1).decode() if found else None
