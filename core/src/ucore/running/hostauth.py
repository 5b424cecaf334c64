"""Who the container knows: its own ``/etc/passwd`` and ``/etc/group``, or (``--hostauth``,
the default as in udocker) private copies of them that also name the invoking user.

The copies are written outside the root filesystem, under the container directory, and bound
over ``/etc/passwd`` and ``/etc/group``: nothing in the image is ever modified, so an image whose
``/etc/passwd`` is a symlink to a host file cannot make ucore write through it (safety rule 9),
and the container stays exactly as it was unpacked.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import NamedTuple, Optional

from ucore.running.hostfiles import bindable, write_copy
from ucore.storage import inroot
from ucore.values.model import Mount

#: Larger account files than this are not ones we should be copying around.
MAX_SIZE = 16 << 20
_SHELL = "/bin/sh"


class Accounts(NamedTuple):
    """The account files the container will see, and the mounts that make it see them."""

    passwd: str
    group: str
    mounts: tuple[Mount, ...] = ()


def container_accounts(root: Path) -> Accounts:
    """The container's own files, untouched (``--containerauth``)."""
    return Accounts(_read(root, "/etc/passwd"), _read(root, "/etc/group"))


def host_accounts(root: Path, state_dir: Path) -> Accounts:
    """The container's files plus the invoking user and its primary group, written to
    ``state_dir`` and bound over the originals, where a file can be (see
    :func:`~ucore.running.hostfiles.bindable`)."""
    own = container_accounts(root)
    texts = {
        "passwd": with_user(own.passwd, _user_line()),
        "group": with_group(own.group, _group_line()),
    }
    mounts = []
    for name, original in (("passwd", own.passwd), ("group", own.group)):
        if texts[name] == original:
            continue
        copy = _write(state_dir, name, texts[name]) if bindable(root, f"/etc/{name}") else None
        if copy is None:
            texts[name] = original
        else:
            mounts.append(Mount(str(copy), f"/etc/{name}"))
    return Accounts(texts["passwd"], texts["group"], tuple(mounts))


def with_user(text: str, line: str) -> str:
    """``text`` with the passwd entry ``line`` in it: an entry of the same name is replaced,
    and it goes before any entry of the same uid, so that the uid maps to the invoking user's
    name (``id -un``) while the image's own name still resolves."""
    name, _, uid = line.split(":")[:3]
    if any(x.split(":")[0] == name and _field(x, 2) == uid for x in text.splitlines()):
        return text  # the image already knows this user (root, or an image built for us)
    lines = [x for x in text.splitlines() if x and x.split(":")[0] != name]
    at = next((i for i, x in enumerate(lines) if _field(x, 2) == uid), len(lines))
    lines.insert(at, line)
    return "\n".join(lines) + "\n"


def with_group(text: str, line: str) -> str:
    """``text`` with group ``line`` in it, unless a group of that gid is already there."""
    name, _, gid = line.split(":")[:3]
    if any(_field(x, 2) == gid for x in text.splitlines()):
        return text
    lines = [x for x in text.splitlines() if x and x.split(":")[0] != name]
    return "\n".join([*lines, line]) + "\n"


def _field(line: str, index: int) -> Optional[str]:
    fields = line.split(":")
    return fields[index] if len(fields) > index else None


def _clean(text: str) -> str:
    return text.replace(":", " ").replace("\n", " ")


def _user_line() -> str:
    uid, gid = os.getuid(), os.getgid()
    try:
        entry = pwd.getpwuid(uid)
        name, gecos, home = entry.pw_name, entry.pw_gecos, entry.pw_dir
    except KeyError:  # a uid the host cannot name (a bare container, an unlisted batch user)
        name, gecos, home = os.environ.get("USER") or f"user{uid}", "", "/"
    if uid == 0:
        name, home = "root", "/root"
    return ":".join(_clean(x) for x in (name, "x", str(uid), str(gid), gecos, home, _SHELL))


def _group_line() -> str:
    gid = os.getgid()
    try:
        name = grp.getgrgid(gid).gr_name
    except KeyError:
        name = f"group{gid}"
    if gid == 0:
        name = "root"
    return f"{_clean(name)}:x:{gid}:"


def _read(root: Path, path: str) -> str:
    try:
        data = inroot.read_file(root, path, MAX_SIZE)
    except OSError:
        data = None
    return data.decode("utf-8", "replace") if data else ""


def _write(state_dir: Path, name: str, text: str) -> Optional[Path]:
    """The copy of ``/etc/NAME`` naming the invoking user; None, with a warning, when the
    container cannot be written (another user's store shared read-only): the container then
    runs with its own file, as with ``--containerauth``."""
    copy = write_copy(state_dir, name, text.encode())
    if copy is None:
        from ucore.log import get_logger

        get_logger(__name__).warning(
            f"cannot write the copy of /etc/{name} naming you:"
            " the container's own is used, as with --containerauth"
        )
    return copy
