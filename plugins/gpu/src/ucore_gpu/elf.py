"""The ``DT_SONAME`` and ``DT_NEEDED`` entries of a shared library, read from its ELF dynamic
section.

A library is bound in the container under its real name and under its soname (what programs
and the dynamic loader ask for), as the linker cache update and symlink hooks of NVIDIA's
toolkit would arrange; reading the soname from the file itself works for libraries from any
source (CDI, ``nvidia-container-cli``, a directory scan) without trusting their names. The
needed libraries are what a host MPI library brings with it into a container (``mpibind``).
"""

from __future__ import annotations

import struct
from typing import BinaryIO, NamedTuple, Optional

from ucore_gpu import files

_PT_DYNAMIC = 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_SONAME = 0, 1, 5, 14
_PT_LOAD = 1
#: Enough for any real header table; a hostile file cannot make us read more.
_MAX_READ = 1 << 20
#: No real library needs more; a hostile one cannot make us read more names.
_MAX_NEEDED = 256


class Dynamic(NamedTuple):
    soname: Optional[str]
    needed: tuple[str, ...]


def soname(path: str) -> Optional[str]:
    """The soname of the ELF shared object at ``path``, or None (not ELF, none, unreadable)."""
    f = files.open_regular(path)
    if f is None:
        return None
    with f:
        found = dynamic(f)
    return found.soname if found else None


def dynamic(f: BinaryIO) -> Optional[Dynamic]:
    """The soname and needed libraries of the ELF object open (seekable) as ``f``; None
    when it is not ELF, has no dynamic section or cannot be read."""
    try:
        return _dynamic(f)
    except (OSError, struct.error, ValueError, OverflowError, UnicodeDecodeError):
        return None


def _dynamic(f: BinaryIO) -> Optional[Dynamic]:
    read = f.read
    seek = f.seek
    ident = read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        return None
    wide = ident[4] == 2
    end = "<" if ident[5] == 1 else ">"
    if wide:
        header = struct.unpack(end + "HHIQQQIHHHHHH", read(48))
        phoff, phentsize, phnum = header[4], header[8], header[9]
        ph_fmt, ph_size, dyn_fmt = end + "IIQQQQQQ", 56, end + "qQ"
    else:
        header = struct.unpack(end + "HHIIIIIHHHHHH", read(36))
        phoff, phentsize, phnum = header[4], header[8], header[9]
        ph_fmt, ph_size, dyn_fmt = end + "IIIIIIII", 32, end + "iI"
    if phentsize < ph_size or phnum * phentsize > _MAX_READ:
        return None
    seek(phoff)
    table = read(phnum * phentsize)
    loads: list[tuple[int, int, int]] = []
    dynamic: Optional[tuple[int, int]] = None
    for i in range(phnum):
        fields = struct.unpack_from(ph_fmt, table, i * phentsize)
        if wide:
            kind, offset, vaddr, filesz = fields[0], fields[2], fields[3], fields[5]
        else:
            kind, offset, vaddr, filesz = fields[0], fields[1], fields[2], fields[4]
        if kind == _PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif kind == _PT_DYNAMIC:
            dynamic = (offset, min(filesz, _MAX_READ))
    if dynamic is None:
        return None
    seek(dynamic[0])
    data = read(dynamic[1])
    step = struct.calcsize(dyn_fmt)
    strtab = name = None
    needed: list[int] = []
    for pos in range(0, len(data) - step + 1, step):
        tag, value = struct.unpack_from(dyn_fmt, data, pos)
        if tag == _DT_NULL:
            break
        if tag == _DT_STRTAB:
            strtab = value
        elif tag == _DT_SONAME:
            name = value
        elif tag == _DT_NEEDED and len(needed) < _MAX_NEEDED:
            needed.append(value)
    if strtab is None:
        return None
    for vaddr, offset, filesz in loads:  # the string table's address, as a file offset
        if vaddr <= strtab < vaddr + filesz:
            base = offset + (strtab - vaddr)
            names = tuple(n for n in (_string(f, base + at) for at in needed) if n)
            return Dynamic(_string(f, base + name) if name is not None else None, names)
    return None


def _string(f: BinaryIO, at: int) -> Optional[str]:
    f.seek(at)
    return f.read(256).split(b"\0", 1)[0].decode("ascii") or None
