"""The ``DT_SONAME`` of a shared library, read from its ELF dynamic section.

A library is bound in the container under its real name and under its soname (what programs
and the dynamic loader ask for), as the linker cache update and symlink hooks of NVIDIA's
toolkit would arrange; reading the soname from the file itself works for libraries from any
source (CDI, ``nvidia-container-cli``, a directory scan) without trusting their names.
"""

from __future__ import annotations

import struct
from typing import Optional

from ucore_gpu import files

_PT_DYNAMIC = 2
_DT_NULL, _DT_STRTAB, _DT_SONAME = 0, 5, 14
_PT_LOAD = 1
#: Enough for any real header table; a hostile file cannot make us read more.
_MAX_READ = 1 << 20


def soname(path: str) -> Optional[str]:
    """The soname of the ELF shared object at ``path``, or None (not ELF, none, unreadable)."""
    f = files.open_regular(path)
    if f is None:
        return None
    try:
        with f:
            return _soname(f)
    except (OSError, struct.error, ValueError, OverflowError):
        return None


def _soname(f: object) -> Optional[str]:
    read = f.read  # type: ignore[attr-defined]
    seek = f.seek  # type: ignore[attr-defined]
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
    for pos in range(0, len(data) - step + 1, step):
        tag, value = struct.unpack_from(dyn_fmt, data, pos)
        if tag == _DT_NULL:
            break
        if tag == _DT_STRTAB:
            strtab = value
        elif tag == _DT_SONAME:
            name = value
    if strtab is None or name is None:
        return None
    for vaddr, offset, filesz in loads:  # the string table's address, as a file offset
        if vaddr <= strtab < vaddr + filesz:
            seek(offset + (strtab - vaddr) + name)
            raw = read(256).split(b"\0", 1)[0]
            return raw.decode("ascii") or None
    return None
