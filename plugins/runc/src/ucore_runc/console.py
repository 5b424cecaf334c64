"""The container's terminal, relayed by ucore itself (``--console-socket``).

Left to the runtime, the relay loses output: crun copies the container's terminal only until
its last child is reaped and then closes it unread, so what a command prints just before it
exits can vanish (under load, "echo started; exit 3" printed nothing in 1 run of 25). Here the
runtime starts the container detached and hands ucore the terminal's master side over a Unix
socket (the OCI runtime's console-socket protocol, one ``SCM_RIGHTS`` message); ucore copies
between it and its own terminal, and after the command has ended and what it left behind has
been ended, reads the master until the kernel reports every slave closed (``EIO``): nothing
printed is lost, whichever runtime started it.

ucore's own terminal is put in raw mode meanwhile, as the runtime would have: the container's
terminal does the line editing, and ^C reaches the container's foreground process group as a
character, through its own terminal, exactly as on a native terminal.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import socket
import termios
import threading
from pathlib import Path
from typing import Any, Optional

from ucore.values.errors import PluginError

#: What one read moves; a terminal rarely holds more.
_CHUNK = 65536
#: Seconds the end of the output is awaited when something outside ucore's reach still holds
#: the container's terminal open.
_DRAIN_LIMIT = 5.0


class Listener:
    """The socket the runtime connects to and sends the master through. It is bound before
    the runtime starts and read after the runtime has exited: the kernel queues both the
    connection and the message meanwhile, so no thread has to wait on it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "console.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(str(self.path))
            self._sock.listen(1)
        except OSError as exc:
            self._sock.close()
            raise PluginError(f"cannot make the console socket {self.path}: {exc}") from None

    def receive(self) -> int:
        """The master's descriptor the runtime sent."""
        self._sock.setblocking(False)
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            raise PluginError("the runtime did not send the container's terminal") from None
        with conn:
            conn.setblocking(True)
            fds = array.array("i")
            _, ancillary, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise PluginError("the runtime did not send the container's terminal")
        os.set_inheritable(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self._sock.close()


class Relay:
    """Copies ucore's stdin to the master and the master to ucore's stdout, in a thread, until
    :meth:`finish`; ucore's terminal is raw meanwhile and restored after."""

    def __init__(self, master: int) -> None:
        self.master = master
        self._saved: Optional[list[Any]] = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._copy, name="ucore-console", daemon=True)

    def __enter__(self) -> Relay:
        import tty

        self.resize()
        if os.isatty(0):
            with contextlib.suppress(termios.error):
                self._saved = termios.tcgetattr(0)
                tty.setraw(0, termios.TCSANOW)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def resize(self) -> None:
        """Give the container's terminal the size of ucore's (at the start and on SIGWINCH:
        the kernel then signals the container's foreground group itself)."""
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(1, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def finish(self) -> None:
        """Call once the command and what it left are gone: the rest of the output is copied
        (the master reads until no slave is open), then the terminal is restored."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        for fd in (self._wake_r, self._wake_w, self.master):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSADRAIN, self._saved)
            self._saved = None

    def _copy(self) -> None:
        reading = [self.master, self._wake_r, 0]
        draining = False
        while True:
            # Draining, a slave still open can only be a process that is not ucore's (it
            # ended all of those): a safety net, not a wait anything depends on.
            ready = select.select(reading, [], [], _DRAIN_LIMIT if draining else None)[0]
            if draining and not ready:
                return
            if self._wake_r in ready:
                # Everything that had the terminal open is gone: read to the end, stdin no more.
                draining = True
                reading = [self.master]
            if self.master in ready or draining:
                try:
                    data = os.read(self.master, _CHUNK)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:  # EIO: the last slave closed
                    return
                _write_all(1, data)  # a reader of ours that went away: keep the master flowing
            if 0 in ready:
                try:
                    data = os.read(0, _CHUNK)
                except OSError:
                    data = b""
                if not data or not _write_all(self.master, data):
                    reading = [r for r in reading if r != 0]  # stdin closed: stop watching it


def _write_all(fd: int, data: bytes) -> bool:
    """False when ``fd`` can take no more (its reader went away)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])
        except OSError:
            return False
    return True
