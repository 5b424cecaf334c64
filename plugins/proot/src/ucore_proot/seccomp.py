"""A seccomp filter that makes chosen system calls fail with ``ENOSYS``.

Installed in the child just before it becomes proot, it applies to proot and to everything in
the container. A call PRoot would pass to the kernel with an untranslated guest path then fails
instead, and the C library falls back to an older call that PRoot does translate (``statx`` to
``newfstatat``, ``faccessat2`` to ``faccessat``, ``clone3`` to ``clone``). The kernel reports
a system call to the tracer before the filter runs, so PRoot still sees everything it handles.

The program is plain classic BPF, built here without libseccomp: check the architecture (a
call from another ABI is allowed as is), then compare the call number with each masked one.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterable
from typing import Callable

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH = 0, 4  # struct seccomp_data
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def program(audit_arch: int, numbers: Iterable[int]) -> bytes:
    """The filter as ``struct sock_filter`` records."""
    nrs = sorted(set(numbers))
    n = len(nrs)
    insns = [
        (_LD_W_ABS, 0, 0, _OFF_ARCH),
        (_JEQ_K, 0, n + 1, audit_arch),  # another ABI: jump to ALLOW
        (_LD_W_ABS, 0, 0, _OFF_NR),
        *((_JEQ_K, n - i, 0, nr) for i, nr in enumerate(nrs)),  # match: jump to ERRNO
        (_RET_K, 0, 0, _RET_ALLOW),
        (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in insns)


def installer(filter_program: bytes) -> Callable[[], None]:
    """A function that installs ``filter_program`` in the process that calls it (which keeps
    it across ``exec``): to be called in the child between ``fork`` and ``exec``.

    ctypes is loaded and the structures built here, in the parent: importing ctypes in the
    child, after ``fork``, costs it twice as much (every page it touches is copied), and the
    container waits for it. The child only makes the two ``prctl`` calls. ``no_new_privs``
    comes first, which an unprivileged process needs for a filter; set-user-id programs in the
    container could not gain privileges under PRoot anyway.
    """
    import ctypes

    class _Fprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(filter_program, len(filter_program))
    prog = _Fprog(len(filter_program) // 8, ctypes.addressof(buf))
    prog_ref = ctypes.byref(prog)

    def install(_program: object = buf) -> None:  # the default keeps the buffer alive
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            errno_ = ctypes.get_errno()
            raise OSError(errno_, f"prctl(NO_NEW_PRIVS): {os.strerror(errno_)}")
        if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, prog_ref, 0, 0) != 0:
            errno_ = ctypes.get_errno()
            raise OSError(errno_, f"seccomp filter: {os.strerror(errno_)}")

    return install
