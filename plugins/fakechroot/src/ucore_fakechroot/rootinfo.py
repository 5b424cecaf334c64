"""What a container's root offers Fakechroot: its dynamic loader, its C library and the
library directories its own linker configuration names.

Fakechroot works by preloading a library into dynamically linked programs, so an image must
have a GNU C library and its loader: a statically linked program (busybox) never loads the
preloaded library and would see the host's files, and a musl image cannot load a glibc one.
Both are refused here, by name, before anything runs.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path
from typing import NamedTuple, Optional

from ucore.storage import inroot
from ucore_fakechroot import elfinfo

#: The GNU loader's name by machine, where a root whose /bin/sh is static may still have one.
_LOADERS = {
    "x86_64": "/lib64/ld-linux-x86-64.so.2",
    "aarch64": "/lib/ld-linux-aarch64.so.1",
    "ppc64le": "/lib64/ld64.so.2",
    "s390x": "/lib/ld64.so.1",
}
_MULTIARCH = {
    "x86_64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "ppc64le": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu",
}
#: Bounds on a hostile image's linker configuration.
_MAX_CONF = 1 << 16
_MAX_INCLUDES = 256


class Refusal(Exception):
    """The image cannot be served by any F mode; the message says why and what would work."""


class RootInfo(NamedTuple):
    #: The loader, canonical inside the root (no links): ``/usr/lib/x86_64-linux-gnu/ld-…``.
    loader: str
    #: The C library's release, (2, 36).
    glibc: tuple[int, int]
    #: Library directories in the loader's search order, canonical inside the root.
    lib_dirs: tuple[str, ...]


def multiarch() -> str:
    return _MULTIARCH.get(os.uname().machine, f"{os.uname().machine}-linux-gnu")


def inspect(root: Path, state: Optional[Path] = None) -> RootInfo:
    """Raise :class:`Refusal` for an image no F mode can run. With ``state``, the C library's
    release is remembered there (reading a 2 MiB ``libc.so.6`` at every run costs
    milliseconds), keyed by the file's identity, so an upgraded libc is read again."""
    loader = _loader(root)
    dirs = lib_dirs(root)
    for d in dirs:
        libc = str(root) + d + "/libc.so.6"
        if os.path.exists(libc):
            release = _release(os.path.realpath(libc), state)
            if release is not None:
                return RootInfo(loader, release, tuple(dirs))
    raise Refusal(
        "the image has a dynamic loader but no GNU C library (libc.so.6) in its library"
        " directories: Fakechroot serves glibc images only; use proot (P1) or runc (R1)"
    )


def _release(libc: str, state: Optional[Path]) -> Optional[tuple[int, int]]:
    import json

    try:
        st = os.stat(libc)
    except OSError:
        return None
    key = [libc, st.st_ino, st.st_size, st.st_mtime_ns]
    cache = state / "libc.json" if state is not None else None
    if cache is not None:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return (int(data["glibc"][0]), int(data["glibc"][1]))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
    release = elfinfo.glibc_release(libc)
    if release is not None and cache is not None:
        try:
            cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = cache.with_name(f".libc.json.{os.getpid()}")
            tmp.write_text(json.dumps({"key": key, "glibc": list(release)}))
            os.replace(tmp, cache)
        except OSError:
            pass  # a store shared read-only: read it each time
    return release


def _loader(root: Path) -> str:
    """The GNU loader under its standard name for this machine, else the one ``/bin/sh``
    names (an F3 container's programs name the private copy, not the image's: the standard
    name comes first so that it is still found)."""
    standard = _LOADERS.get(os.uname().machine)
    found = _canonical(root, standard) if standard else None
    if found is not None and _is_file(root, found):
        return found
    sh = _canonical(root, "/bin/sh")
    interp = elfinfo.interpreter(str(root) + sh) if sh else None
    if interp is None:
        raise Refusal(
            "the image has no dynamic loader (its /bin/sh is statically linked, as"
            " busybox's is): Fakechroot preloads a library, which static programs never"
            " load; use proot (P1) or runc (R1)"
        )
    if "musl" in interp:
        raise Refusal(
            f"the image's C library is musl ({interp}): libfakechroot is built for glibc"
            " and cannot be loaded by musl programs; use proot (P1) or runc (R1)"
        )
    found = _canonical(root, interp)
    if found is None or not _is_file(root, found):
        raise Refusal(f"the image's /bin/sh names the loader {interp}, which the image lacks")
    return found


def lib_dirs(root: Path) -> list[str]:
    """The directories the image's own loader would search: ``/etc/ld.so.conf`` (with its
    ``include`` lines, globbed inside the root), then the loader's built-in defaults."""
    arch = multiarch()
    named = _conf(root, "/etc/ld.so.conf", [0])
    defaults = [f"/lib/{arch}", f"/usr/lib/{arch}", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    out: list[str] = []
    for d in [*named, *defaults]:
        found = _canonical(root, d)
        if found and found not in out and _is_dir(root, found):
            out.append(found)
    return out


def _conf(root: Path, path: str, seen: list[int]) -> list[str]:
    seen[0] += 1
    if seen[0] > _MAX_INCLUDES:
        return []
    data = inroot.read_file(root, path, _MAX_CONF) or b""
    dirs: list[str] = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include"):
            pattern = line.split(None, 1)[1].strip() if " " in line or "\t" in line else ""
            if not pattern:
                continue
            if not pattern.startswith("/"):
                pattern = posixpath.join(posixpath.dirname(path), pattern)
            for name in _glob(root, pattern):
                dirs += _conf(root, name, seen)
        elif line.startswith("/"):
            dirs.append(line.split("=", 1)[0].rstrip("/") or "/")
    return dirs


def _glob(root: Path, pattern: str) -> list[str]:
    """``include`` globs expanded inside the root: the directory part resolved in the root,
    the file part matched against its entries."""
    folder = _canonical(root, posixpath.dirname(pattern))
    if folder is None:
        return []
    base = posixpath.basename(pattern)
    try:
        names = sorted(os.listdir(str(root) + folder))
    except OSError:
        return []
    import fnmatch

    return [posixpath.join(folder, n) for n in names if fnmatch.fnmatchcase(n, base)]


def _canonical(root: Path, path: str) -> Optional[str]:
    try:
        walk = inroot.resolve(root, path)
    except OSError:
        return None
    return walk.path if walk.missing == 0 else None


def _is_file(root: Path, path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(str(root) + path).st_mode)
    except OSError:
        return False


def _is_dir(root: Path, path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(str(root) + path).st_mode)
    except OSError:
        return False
