"""The command modules (one per group of commands) and the options several of them share.

Each module has ``add_commands(subparsers, common)``; the CLI imports only the module of the
command being run (see ``ucore.cli.COMMANDS``), so what is shared lives here, not in one of them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import IO, Callable

from ucore.values.errors import StoreError, UsageError


def add_registry_options(p: argparse.ArgumentParser, platform: bool = True) -> None:
    p.add_argument(
        "--registry",
        metavar="URL",
        help="registry for names without one (host[:port] or http(s)://host[:port])",
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow plain HTTP to the --registry host"
    )
    if platform:
        p.add_argument(
            "--platform",
            metavar="OS/ARCH[/VARIANT]",
            help="platform to pull (default: this host's)",
        )


def write_beside(path: str, command: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write an output file (``save -o``, ``export -o``) whole or not at all.

    The bytes go to a fresh file beside ``path`` (so that the rename is atomic), made with
    O_EXCL and O_NOFOLLOW under an unpredictable, short name: a link planted in a shared
    directory is never written through, nor can a planted name block the command, and an
    output name near the 255-byte limit still leaves room. The rename replaces a link at
    ``path`` itself rather than following it; a failure leaves any previous file as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".ucore-{command}.{os.getpid()}.{os.urandom(6).hex()}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o666)
    except OSError as exc:
        raise StoreError(f"{command}: cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"{command}: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def read_input(path: str, command: str, hint: str) -> Iterator[IO[bytes]]:
    """The tarball a command reads (``load``, ``import``): the file ``path``, or standard
    input for ``-``, which is refused (``hint`` says what to give instead) when it is a
    terminal (a file was forgotten) or closed (``<&-``: Python then has no ``sys.stdin``)."""
    if path == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(f"{command}: {hint}")
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"{command}: cannot read {path}: {exc.strerror}") from None
    with f:
        yield f


def write_output(path: str, command: str, write: Callable[[IO[bytes]], None]) -> None:
    """The tarball a command writes (``save``, ``export``): to the file ``path`` through
    :func:`write_beside`, or to standard output for ``-``, which is refused when it is a
    terminal or closed (``>&-``: Python then has no ``sys.stdout``)."""
    if path != "-":
        write_beside(path, command, write)
        return
    if sys.stdout is None:
        raise UsageError(f"{command}: no stdout to write to; use -o FILE")
    if sys.stdout.isatty():
        raise UsageError(f"{command}: refusing to write a tarball to a terminal; use -o FILE")
    sys.stdout.flush()  # what was printed before goes first
    write(sys.stdout.buffer)
    sys.stdout.buffer.flush()
