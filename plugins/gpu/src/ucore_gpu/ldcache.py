"""Reading the dynamic linker's cache (``/etc/ld.so.cache``), as ``ldconfig -p`` prints it.

The cache is where a host's driver libraries are registered, wherever the distribution put
them; reading it directly costs a fraction of running ``ldconfig -p`` and works on a synthetic
device root. glibc writes the "new" format since 2.32, and before that the old format followed
by the new one; both are read. Entries for another architecture (the i386 copies of a
multilib host) are skipped.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from ucore_gpu import files

_OLD = b"ld.so-1.7.0"
_NEW = b"glibc-ld.so.cache1.1"
#: ``FLAG_ELF_LIBC6`` plus the 64-bit library flag of each architecture glibc marks.
_ARCH_FLAGS = {"x86_64": 0x0303, "aarch64": 0x0A03, "ppc64le": 0x0503, "s390x": 0x0403}
_TYPE_MASK = 0xFF
_ARCH_MASK = 0xFF00
#: No real cache is this big; a hostile or damaged one is not read past it.
MAX_SIZE = 64 << 20


class Entry(NamedTuple):
    soname: str
    path: str


def read(path: str) -> list[Entry]:
    """The cache's libraries for this machine's architecture; empty when there is no cache
    or it cannot be parsed."""
    data = files.read_regular(path, MAX_SIZE + 1)
    return [] if data is None else entries(data)


def entries(data: bytes) -> list[Entry]:
    """The libraries for this machine's architecture in a cache file's bytes (read from a
    container's root, say); empty when it is too big or cannot be parsed."""
    if len(data) > MAX_SIZE:
        return []
    try:
        return parse(data, _ARCH_FLAGS.get(os.uname().machine))  # not platform: 2 ms to import
    except (struct.error, ValueError, IndexError):  # truncated or damaged
        return []


def parse(data: bytes, want: int | None) -> list[Entry]:
    """Entries of a cache file's bytes; ``want`` the flags of this architecture (None: all)."""
    base = 0
    if data.startswith(_OLD):
        (count,) = struct.unpack_from("<I", data, 12)
        base = 16 + count * 12
        base = (base + 7) & ~7
    if data[base : base + len(_NEW)] != _NEW:
        return []
    order = "<" if data[base + 28] & 0x3 != 3 else ">"
    (count,) = struct.unpack_from(order + "I", data, base + 20)
    if 48 + count * 24 > len(data) - base:
        raise ValueError("truncated cache")
    out = []
    for i in range(count):
        flags, key, value, _os, _hwcap = struct.unpack_from(
            order + "iIIIQ", data, base + 48 + i * 24
        )
        if want is not None and (flags & (_TYPE_MASK | _ARCH_MASK)) != want:
            continue
        out.append(Entry(_string(data, base + key), _string(data, base + value)))
    return out


def _string(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("utf-8", "surrogateescape")
