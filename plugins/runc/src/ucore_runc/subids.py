"""runc, rootless, as a user other than the container's root.

crun runs ``-u 1234`` with one id mapped, the invoking user's as 1234. runc cannot: it wants
the container's root mapped too, and ``chown``s its ``exec.fifo`` to that root's host id, which
the user may not do when that id is not its own. So a second host id is needed, the first of
the user's ``/etc/subuid`` (and ``/etc/subgid``) range, and runc must be allowed to ``chown``
to it: ucore starts runc in a user namespace of its own where the invoking user is 0 and the
subordinate id is 1 (mapped by the setuid helpers ``newuidmap``/``newgidmap``), and runc then
maps the container's user onto 0 (the invoking user, who owns what the command writes) and the
container's root onto 1.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

from ucore.running import spawn
from ucore.values.errors import PluginError

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def subordinate(kind: str, uid: int, path: Optional[str] = None) -> Optional[int]:
    """The first id of the user's range in ``/etc/subuid`` (``kind="uid"``) or ``/etc/subgid``
    (or ``path``), where ``newuidmap``/``newgidmap`` can map it; None otherwise."""
    if _helper(kind) is None:
        return None
    import pwd

    try:
        names = {pwd.getpwuid(uid).pw_name, str(uid)}
    except KeyError:
        names = {str(uid)}
    try:
        with open(path or f"/etc/sub{kind}") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, rest = line.strip().partition(":")
        start, _, count = rest.partition(":")
        if name in names and start.isdigit() and count.isdigit() and int(count) >= 1:
            return int(start)
    return None


def _helper(kind: str) -> Optional[str]:
    return shutil.which(f"new{kind}map", path=os.pathsep.join([os.defpath, *_SBIN]))


def outer_namespace(uid: int, gid: int, subuid: int, subgid: int) -> spawn.Step:
    """A step for the child about to become runc: a user namespace where ``uid``/``gid`` are
    0 and ``subuid``/``subgid`` are 1, entered as its root. The maps are written by a helper
    process forked first, which stays in the parent namespace as the helpers require."""

    def step() -> None:
        import ctypes

        ready_r, ready_w = os.pipe()
        helper = os.fork()
        if helper == 0:  # pragma: no cover - the helper; the runs it makes possible are tested
            os.close(ready_w)
            os.read(ready_r, 1)
            os._exit(_write_maps(os.getppid(), uid, gid, subuid, subgid))
        os.close(ready_r)
        libc = ctypes.CDLL(None, use_errno=True)
        # A mount namespace of its own too: runc, root here, opens bind sources from "the host's"
        # mount namespace, which it may enter only if this user namespace owns it.
        failed = libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0
        errno = ctypes.get_errno()
        os.write(ready_w, b"x")
        os.close(ready_w)
        _, status = os.waitpid(helper, 0)
        if failed:
            raise PluginError(f"cannot make runc's user namespace: {os.strerror(errno)}")
        if os.waitstatus_to_exitcode(status) != 0:
            raise PluginError(
                f"newuidmap/newgidmap would not map your subordinate ids {subuid}/{subgid}"
                " (see /etc/subuid and /etc/subgid)"
            )
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)

    return step


def _write_maps(pid: int, uid: int, gid: int, subuid: int, subgid: int) -> int:
    for kind, own, sub in (("uid", uid, subuid), ("gid", gid, subgid)):
        helper = _helper(kind)
        if helper is None:
            return 1
        argv = [helper, str(pid), "0", str(own), "1", "1", str(sub), "1"]
        child = os.fork()
        if child == 0:
            try:
                os.execv(helper, argv)
            finally:
                os._exit(127)
        _, status = os.waitpid(child, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return 1
    return 0
