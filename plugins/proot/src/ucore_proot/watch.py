"""Following the container's main process, which PRoot does not report faithfully.

PRoot exits with the status of whichever traced process *exited last*, and a process killed by
a signal does not count: ``sh -c 'sleep 1 & exit 3'`` gives 0, and a job whose main process is
killed after one of its children exited normally looks successful. It also waits for every
process left behind, so a forgotten background process keeps a batch job alive.

So ucore does what Docker does when a container's main process ends: it ends the others
(``SIGKILL``), and takes the exit status from the main process itself. A thread finds the
main process (PRoot's child), opens a pidfd on it and waits; when it ends, its status is read
through the pidfd (``PIDFD_INFO_EXIT``, Linux 6.15 and later) and the leftovers are killed, so
PRoot's own status is the main process's in every ordinary case on older kernels too. What is
left there: a main process killed by a signal ucore did not forward reports PRoot's status
(255, or that of an earlier normal exit).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import threading
import time
from typing import Optional

from ucore.running import spawn

#: ``_IOWR(0xFF, 11, struct pidfd_info)`` with the first version of the structure (64 bytes).
_PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 1 << 3
_INFO = struct.Struct("=QQ11Ii")
#: How long PRoot may take to start the command: looked for without pause, then at all.
_BUSY_FOR = 0.05
_FIND_FOR = 5.0


class MainWatch:
    """Started with PRoot's pid; ``status`` is the main process's, shell-style, when known."""

    def __init__(self) -> None:
        self.status: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        #: Set once PRoot has been reaped: it exits only after every process it traced, so
        #: nothing is left to end (and its pid may already belong to another process).
        self._proot_reaped = threading.Event()

    def start(self, proot_pid: int) -> None:
        """Find the main process now, while ``ucore`` has nothing else to do (a short command
        can be gone within a millisecond, and its pidfd must be open before it is reaped);
        then wait for it in a thread."""
        main = _find(proot_pid, _BUSY_FOR, busy=True)
        self._thread = threading.Thread(
            target=self._follow, args=(proot_pid, main), name="ucore-proot-main", daemon=True
        )
        self._thread.start()

    def join(self) -> None:
        """Called once PRoot has exited and been reaped."""
        self._proot_reaped.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _follow(self, proot_pid: int, main: Optional[int]) -> None:
        if main is None:
            main = _find(proot_pid, _FIND_FOR, busy=False)
        if main is None:
            return
        try:
            fd = os.pidfd_open(main)
        except (OSError, AttributeError):  # already gone, or no pidfd (Linux < 5.3)
            return
        try:
            select.select([fd], [], [])
            self.status = _reaped_status(fd, main)
        finally:
            os.close(fd)
        if self._proot_reaped.is_set():
            return
        for pid in spawn.traced_by(proot_pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _find(proot_pid: int, seconds: float, busy: bool) -> Optional[int]:
    """PRoot's first child, polled without pause (``busy``) or every few milliseconds."""
    started = time.monotonic()
    path = f"/proc/{proot_pid}/task/{proot_pid}/children"
    while time.monotonic() - started < seconds:
        try:
            with open(path) as f:
                kids = f.read().split()
        except OSError:
            return None  # PRoot is gone (or this kernel lists no children)
        if kids:
            return int(kids[0])
        if busy:
            os.sched_yield()
        else:
            time.sleep(0.002)
    return None


def _reaped_status(pidfd: int, pid: int) -> Optional[int]:
    """The kernel records the exit status for the pidfd when PRoot reaps the process, an
    instant after the pidfd says it exited: wait for the zombie to go first."""
    deadline = time.monotonic() + 1.0
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.0005)
    return exit_status(pidfd)


def exact_signal_status() -> bool:
    """Whether this kernel keeps exit statuses for pidfds (``PIDFD_INFO_EXIT``, Linux 6.15)."""
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return found is not None and (int(found[1]), int(found[2])) >= (6, 15)


def exit_status(pidfd: int) -> Optional[int]:
    """Shell-style status of the exited process behind ``pidfd``, where the kernel tells."""
    buf = bytearray(_INFO.pack(_PIDFD_INFO_EXIT, 0, *([0] * 11), 0))
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf)
    except OSError:
        return None
    fields = _INFO.unpack(buf)
    if not fields[0] & _PIDFD_INFO_EXIT:
        return None
    code = os.waitstatus_to_exitcode(fields[-1])
    return code if code >= 0 else 128 - code
