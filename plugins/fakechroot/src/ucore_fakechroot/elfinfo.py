"""What ucore needs to know of an ELF file to run it under Fakechroot, read from the file.

Only the program headers are parsed (the interpreter, ``PT_INTERP``); version names are found
by scanning the dynamic string table's text, which is what ``readelf -V`` would print for the
``GLIBC_2.N`` names a library needs. Every read is bounded: files come from hostile images.
"""

from __future__ import annotations

import os
import re
import struct
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

_PT_INTERP = 3
_MAX_HEADERS = 1 << 16
_MAX_INTERP = 4096
#: A C library or libfakechroot is a few MiB; a file this large is not one to scan.
_MAX_SCAN = 64 << 20
_GLIBC_NAME = re.compile(rb"(?<=\0)GLIBC_(\d+)\.(\d+)(?:\.\d+)?(?=\0)")
_BANNER = re.compile(rb"release version (\d+)\.(\d+)")


def _open(path: str) -> Optional[int]:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None


def header(path: str) -> Optional[bytes]:
    """The first 64 bytes of a regular file (None for anything else), for a cheap ELF test."""
    return _on_regular(path, lambda fd: os.pread(fd, 64, 0))


def is_elf(data: Optional[bytes]) -> bool:
    return bool(data) and data[:4] == b"\x7fELF"  # type: ignore[index]


def interpreter(path: str) -> Optional[str]:
    """The program interpreter an ELF executable names (``/lib64/ld-linux-x86-64.so.2``);
    None for a static program, a shared library without one, or a file that is not ELF."""
    try:
        return _on_regular(path, _interpreter)
    except (OSError, struct.error, ValueError):
        return None


def _on_regular(path: str, read: Callable[[int], T]) -> Optional[T]:
    """``read(fd)`` on ``path`` when it is a regular file (never a FIFO or a device an image
    planted), else None."""
    fd = _open(path)
    if fd is None:
        return None
    try:
        return read(fd) if _is_regular(fd) else None
    finally:
        os.close(fd)


def _interpreter(fd: int) -> Optional[str]:
    ident = os.pread(fd, 64, 0)
    if len(ident) < 52 or ident[:4] != b"\x7fELF":
        return None
    end = "<" if ident[5] == 1 else ">"
    if ident[4] == 2:
        phoff, phentsize, phnum = (
            struct.unpack_from(end + "Q", ident, 32)[0],
            *struct.unpack_from(end + "HH", ident, 54),
        )
        fmt, offset_at, size_at = end + "IIQQQQQQ", 2, 5
    else:
        phoff, phentsize, phnum = (
            struct.unpack_from(end + "I", ident, 28)[0],
            *struct.unpack_from(end + "HH", ident, 42),
        )
        fmt, offset_at, size_at = end + "IIIIIIII", 1, 4
    if phentsize < struct.calcsize(fmt) or phnum * phentsize > _MAX_HEADERS:
        return None
    table = os.pread(fd, phnum * phentsize, phoff)
    for i in range(min(phnum, len(table) // phentsize)):
        fields = struct.unpack_from(fmt, table, i * phentsize)
        if fields[0] == _PT_INTERP:
            size = min(fields[size_at], _MAX_INTERP)
            raw = os.pread(fd, size, fields[offset_at]).split(b"\0", 1)[0]
            return raw.decode("utf-8", "surrogateescape") or None
    return None


def glibc_names(path: str) -> list[tuple[int, int]]:
    """Every ``GLIBC_2.N`` version name in the file, as (2, N): for a library, the versions
    of the C library it needs (and, for the C library itself, the versions it defines)."""
    data = _read_all(path)
    return sorted({(int(a), int(b)) for a, b in _GLIBC_NAME.findall(data or b"")})


def glibc_release(path: str) -> Optional[tuple[int, int]]:
    """The release a GNU C library (``libc.so.6``) says it is, from its version banner
    ("... stable release version 2.36."), else from the newest version name it defines."""
    data = _read_all(path)
    if not data:
        return None
    found = _BANNER.search(data)
    if found:
        return int(found.group(1)), int(found.group(2))
    names = {(int(a), int(b)) for a, b in _GLIBC_NAME.findall(data)}
    return max(names) if names else None


def _read_all(path: str) -> Optional[bytes]:
    fd = _open(path)
    if fd is None:
        return None
    try:
        if not _is_regular(fd) or os.fstat(fd).st_size > _MAX_SCAN:
            return None
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
