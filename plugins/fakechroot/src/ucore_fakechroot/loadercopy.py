"""F2's private loader: a copy of the container's ``ld.so`` that never reads the host's
linker configuration.

The loader starts before libfakechroot is loaded, so its own file accesses are not
translated: the image's loader, asked for a library that the library path lacks, goes on to
the *host's* ``/etc/ld.so.cache`` and ``/lib``, ``/usr/lib``, and reads the host's
``/etc/ld.so.preload`` at every start. A program then runs with a host library that its
image never had, or fails in a way no one can reproduce elsewhere. The copy has those
built-in names overwritten with names of the same length that exist nowhere
(``/---------------``), so the only libraries it finds are the ones on the library path
ucore gives it: the image's. The image's own loader is never changed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: GNU ld.so is a few hundred KiB; a hostile image's "loader" of gigabytes is not read.
_MAX_LOADER = 16 << 20

#: Built-in names of host files and directories in GNU ld.so, each ended by a NUL.
_HOST_NAMES = (
    b"/etc/ld.so.cache",
    b"/etc/ld.so.preload",
    b"/etc/ld.so.nohwcap",
)
_DIR_SUFFIXES = (b"/lib/", b"/usr/lib/", b"/lib64/", b"/usr/lib64/", b"/lib32/", b"/usr/lib32/")


def patched(data: bytes, multiarch: str) -> bytes:
    """``data`` (a GNU ld.so) with every host path it would search replaced."""
    names = [*_HOST_NAMES, *_DIR_SUFFIXES]
    arch = multiarch.encode()
    names += [b"/lib/" + arch + b"/", b"/usr/lib/" + arch + b"/"]
    out = bytearray(data)
    for name in sorted(names, key=len, reverse=True):
        needle = b"\0" + name + b"\0"
        blank = b"\0/" + b"-" * (len(name) - 1) + b"\0"
        start = 0
        while True:
            at = out.find(needle, start)
            if at < 0:
                break
            out[at : at + len(needle)] = blank
            start = at + 1
    return bytes(out)


def ensure(state: Path, image_loader: str, multiarch: str) -> str:
    """The path of the private loader for the image's loader at ``image_loader`` (host
    path), made (or remade, when the image's changed) under ``state``. Which copy serves
    which loader file is remembered by the file's identity, so a run reads the loader only
    when it changed."""
    import json

    st = os.stat(image_loader)
    if st.st_size > _MAX_LOADER:
        raise OSError(f"{image_loader}: {st.st_size} bytes is no dynamic loader")
    key = [image_loader, st.st_ino, st.st_size, st.st_mtime_ns]
    memo = state / "loader.json"
    try:
        known = json.loads(memo.read_text())
        copy = state / os.path.basename(str(known["copy"]))
        if known.get("key") == key and copy.is_file():
            return str(copy)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    import hashlib

    data = Path(image_loader).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = state / f"ld-{digest}.so"
    if not target.exists():
        _write(state, target, patched(data, multiarch))
    note = state / f".loader.json.{os.getpid()}"
    with contextlib.suppress(OSError):  # a store shared read-only: found again next time
        note.write_text(json.dumps({"key": key, "copy": target.name}))
        os.replace(note, memo)
    return str(target)


def _write(state: Path, target: Path, data: bytes) -> None:
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = state / f".ld.{os.getpid()}"
    tmp.write_bytes(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)  # an older copy stays: F3 programs may still name it
