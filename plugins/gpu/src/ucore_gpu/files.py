"""Opening the host's files for reading without hanging on one that is not a regular file.

Discovery reads files a hostile or damaged host tree may have replaced: a FIFO in place of
``/etc/ld.so.cache``, a driver's ``/proc`` file or a library would block ``open`` (a FIFO
without a writer) or ``read`` forever, and a device node could stream without end. Every such
file is opened non-blocking and read only if it is a regular file (``/proc`` and ``/sys``
files are).
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Optional


def open_regular(path: str) -> Optional[BinaryIO]:
    """``path`` open for binary reading if it is a regular file (links followed), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")
    except OSError:
        os.close(fd)
        return None


def read_regular(path: str, limit: int) -> Optional[bytes]:
    """At most ``limit`` bytes of a regular file; None when it is not one or cannot be read."""
    f = open_regular(path)
    if f is None:
        return None
    try:
        with f:
            return f.read(limit)
    except OSError:
        return None


def read_text(path: str, limit: int) -> Optional[str]:
    """A regular file's first ``limit`` bytes as text (invalid UTF-8 replaced)."""
    data = read_regular(path, limit)
    return None if data is None else data.decode("utf-8", errors="replace")
