"""The first command of a run, as the container's own loader starts it.

libfakechroot sends every later ``exec`` through the loader named in
``FAKECHROOT_ELFLOADER``; the first one is ucore's. It is looked up as the container's shell
would (``PATH``, from the image's environment, inside the root), then started as
``LOADER --argv0 NAME HOST-PATH ARGS``: the loader then loads the program and the image's
libraries, never the host's. A script is started through its ``#!`` interpreter the same way.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from typing import Callable, Optional

from ucore_fakechroot import elfinfo

#: The GNU loader understands ``--argv0`` from glibc 2.33 on.
ARGV0_SINCE = (2, 33)
_MAX_SHEBANG = 256


def argv(
    command: Sequence[str],
    env: dict[str, str],
    cwd: str,
    host: Callable[[str], Optional[str]],
    loader: tuple[str, bool],
) -> list[str]:
    """The host command line. ``host`` maps a container path to the host path a program
    reaches it by (None: nothing there); ``loader`` is the loader's host path and whether it
    understands ``--argv0``."""
    name = command[0]
    path, where = _find(name, env, cwd, host)
    with open(where, "rb") as f:
        head = f.read(_MAX_SHEBANG)
    if head.startswith(b"#!"):
        line = head[2:].split(b"\n", 1)[0].decode("utf-8", "surrogateescape").strip()
        interp, _, arg = line.partition(" ")
        interp_host = host(interp) if interp.startswith("/") else None
        if interp_host is None:
            return [where, *command[1:]]  # let the kernel report it
        rest = [*([arg.strip()] if arg.strip() else []), path, *command[1:]]
        return _through(loader, interp_host, interp, rest)
    if elfinfo.is_elf(head) and elfinfo.interpreter(where) is None:
        return [where, *command[1:]]  # static: no loader can start it (nor is it translated)
    return _through(loader, where, name, list(command[1:]))


def _through(loader: tuple[str, bool], program: str, name: str, rest: list[str]) -> list[str]:
    path, argv0 = loader
    return [path, *(["--argv0", name] if argv0 else []), program, *rest]


def _find(
    name: str, env: dict[str, str], cwd: str, host: Callable[[str], Optional[str]]
) -> tuple[str, str]:
    if "/" in name:
        candidates = [posixpath.normpath(posixpath.join(cwd, name))]
    else:
        search = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        candidates = [posixpath.join(d, name) for d in search.split(":") if d.startswith("/")]
    for path in candidates:
        where = host(path)
        if where is not None and os.path.isfile(where) and os.access(where, os.X_OK):
            return path, where
    raise FileNotFoundError(name)  # the core checked it exists: a race with the container
