"""The OCI runtime ``config.json`` for one run, written by ucore rather than by ``runc spec``.

What it asks of the runtime, and why:

* **Namespaces: a user and a mount namespace, nothing else.** No network namespace (batch jobs
  and MPI need the host's network), no UTS namespace (the host name is the node's, as MPI and
  batch scripts expect), no IPC namespace (shared memory between the ranks of a job), and no PID
  namespace: the command is not process 1 of its own namespace, so a ``SIGTERM`` it does not
  trap ends it as it would outside a container (process 1 ignores such signals), and a shell
  that signals itself gets the status it expects. The host's ``/proc`` is therefore bound in;
  a new procfs needs a PID namespace of its own.
* **No cgroups**: no ``linux.resources`` and no ``cgroupsPath``, so the run works where the
  user has no delegated cgroup (most batch nodes); crun is also told ``--cgroup-manager=disabled``.
* **Identity** (:func:`identity`): one id mapped, the invoking user's, onto the container's
  root or onto the ``-u``/image user, so that files the command writes belong to the invoking
  user on the host whoever it runs as inside.
* **Mounts**, every one a bind (a rootless runtime cannot ``mknod``): a minimal ``/dev`` (a
  ``tmpfs`` in which the runtime binds ``null zero full random urandom tty`` from the host), a
  new ``devpts``, the host's ``/dev/shm`` and ``/dev/mqueue`` (shared by the ranks of a job;
  private ones with ``--nosysdirs``), ``/sys`` read-only, then every mount and device node of
  the run spec. A rootless runtime may only remount a bind with the flags the kernel locked on
  its source (``nosuid``, ``nodev``, ``noexec``, the atime mode), so each bind carries them.
* **Process**: args, env, cwd, the user, a terminal only when both stdin and stdout are one
  (a job redirecting output from an interactive shell would otherwise get CRLF line ends and its
  stderr mixed into the file), Docker's default capabilities for root and none for other users,
  and ``noNewPrivileges`` (one id is mapped, so set-id programs could gain nothing anyway).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

if TYPE_CHECKING:
    from ucore.values.model import RunSpec

OCI_VERSION = "1.0.2"
#: Docker's default capabilities (moby's ``oci/caps/defaults.go``), which images are built for.
DEFAULT_CAPS = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)
#: The host directories a run binds itself rather than as plain mounts of the run spec.
PSEUDO = ("/proc", "/dev", "/sys")
#: ``statvfs`` flag -> the mount option a bind remount must repeat (the kernel locks them).
_LOCKED = (
    (os.ST_NOSUID, "nosuid"),
    (os.ST_NODEV, "nodev"),
    (os.ST_NOEXEC, "noexec"),
    (os.ST_NOATIME, "noatime"),
    (os.ST_NODIRATIME, "nodiratime"),
    (os.ST_RELATIME, "relatime"),
)
#: The largest id range a user namespace can map (``uid_map`` lengths are 32-bit, -1 is invalid).
_ALL_IDS = 4294967295


class IdMap(NamedTuple):
    """One line of ``uid_map``/``gid_map``: ``size`` ids from ``container`` onwards are ``host``
    onwards (``host`` as the runtime sees ids: the host's, or those of a namespace ucore made)."""

    container: int
    host: int
    size: int = 1

    def to_json(self) -> dict[str, int]:
        return {"containerID": self.container, "hostID": self.host, "size": self.size}


class Identity(NamedTuple):
    """Who the command runs as inside, and the mappings that make it so."""

    uid: int
    gid: int
    uids: tuple[IdMap, ...]
    gids: tuple[IdMap, ...]


def identity(
    uid: Optional[int],
    gid: Optional[int],
    host_uid: int,
    host_gid: int,
    *,
    privileged: bool,
    root_uid: Optional[int] = None,
    root_gid: Optional[int] = None,
) -> Identity:
    """The container's user (``None``: root, as Docker) and its id mappings.

    Unprivileged, the one host id the user owns becomes the container user's, so every file the
    command writes is the invoking user's on the host. ``root_uid``/``root_gid`` are the host ids
    (from ``/etc/subuid``) that runc needs for the container's root when the user is another
    one (runc refuses a namespace without a root); crun needs none. Privileged (ucore run by
    root), ids map to themselves, as Docker run by root does: ``-u 1234`` is host uid 1234.
    """
    cuid = uid or 0
    cgid = gid if gid is not None else 0
    if privileged:
        everything = (IdMap(0, 0, _ALL_IDS),)
        return Identity(cuid, cgid, everything, everything)
    return Identity(
        cuid,
        cgid,
        _with_root(IdMap(cuid, host_uid), root_uid),
        _with_root(IdMap(cgid, host_gid), root_gid),
    )


def _with_root(own: IdMap, root: Optional[int]) -> tuple[IdMap, ...]:
    if own.container == 0 or root is None:
        return (own,)
    return (own, IdMap(0, root))


def bind(source: str, target: str, readonly: bool = False) -> dict[str, Any]:
    """A (recursive) bind mount that a rootless runtime can make: the source's locked flags
    are repeated, or the remount to read-only would fail with EPERM."""
    options = ["rbind", "ro" if readonly else "rw", *locked_flags(source)]
    return {"destination": target, "type": "bind", "source": source, "options": options}


def locked_flags(path: str) -> list[str]:
    try:
        have = os.statvfs(path).f_flag
    except OSError:
        return []  # the runtime reports the missing source itself
    return [option for flag, option in _LOCKED if have & flag]


def base_mounts(sysdirs: bool, proc: bool) -> list[dict[str, Any]]:
    """``/proc`` (the host's: without a PID namespace there is no other), the minimal ``/dev``,
    and ``/sys`` read-only (``sysdirs``). ``proc`` binds ``/proc`` even without ``sysdirs``:
    runc needs it in the container (it closes inherited descriptors through /proc/self/fd)."""
    mounts = []
    if sysdirs or proc:
        mounts.append(bind("/proc", "/proc"))
    mounts += [
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
    ]
    if sysdirs and os.path.isdir("/dev/shm"):
        mounts.append(bind("/dev/shm", "/dev/shm"))
    else:
        mounts.append(
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            }
        )
    if sysdirs and os.path.isdir("/dev/mqueue"):
        mounts.append(bind("/dev/mqueue", "/dev/mqueue"))
    if sysdirs:
        mounts.append(bind("/sys", "/sys", readonly=True))
    return mounts


def has_sysdirs(spec: RunSpec) -> bool:
    """Whether the run binds the host's system directories (no ``--nosysdirs``)."""
    return any(is_sysdir(m.source, m.target) for m in spec.mounts)


def is_sysdir(source: str, target: str) -> bool:
    """Whether a run-spec mount is one of the host's ``/proc``, ``/dev``, ``/sys`` binds
    (udocker's "sysdirs"), which a run replaces with its own (:func:`base_mounts`)."""
    return target in PSEUDO and source == os.path.realpath(target)


def config(
    spec: RunSpec,
    root: Path,
    who: Identity,
    *,
    proc: bool,
    terminal: bool,
) -> dict[str, Any]:
    """The whole ``config.json`` for running ``spec`` in the root filesystem ``root``."""
    mounts = base_mounts(has_sysdirs(spec), proc)
    mounts += [
        bind(m.source, m.target, m.readonly)
        for m in spec.mounts
        if not is_sysdir(m.source, m.target)
    ]
    mounts += [bind(d.path, d.target or d.path) for d in spec.devices]
    caps = list(DEFAULT_CAPS)
    process = {
        "terminal": terminal,
        "user": {"uid": who.uid, "gid": who.gid},
        "args": list(spec.argv),
        "env": [f"{name}={value}" for name, value in spec.env],
        "cwd": spec.cwd,
        "capabilities": {
            "bounding": caps,
            "effective": caps if who.uid == 0 else [],
            "permitted": caps if who.uid == 0 else [],
        },
        "noNewPrivileges": True,
    }
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(root), "readonly": False},
        "mounts": mounts,
        "linux": {
            "uidMappings": [m.to_json() for m in who.uids],
            "gidMappings": [m.to_json() for m in who.gids],
            "namespaces": [{"type": "mount"}, {"type": "user"}],
        },
    }


def check_root(root: Path, paths: Iterable[str]) -> Optional[str]:
    """Why the image's own ``/dev``, ``/proc`` or ``/sys`` must not be mounted over (one line),
    or None. The runtime mounts onto these by name: one that is a symlink in the image (to
    ``/proc/1/root``, say, which names the host's root once ``/proc`` is mounted) would aim a
    mount elsewhere, so anything but a plain directory (or nothing, which the runtime creates)
    is refused before the runtime sees it."""
    import stat

    for path in paths:
        try:
            mode = os.lstat(root / path.lstrip("/")).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"the image's {path} cannot be inspected: {exc.strerror}"
        if stat.S_ISLNK(mode):
            target = os.readlink(root / path.lstrip("/"))
            return (
                f"the image's {path} is a symbolic link (to {target}), refused: the runtime"
                f" would mount the container's {path} through it"
            )
        if not stat.S_ISDIR(mode):
            return f"the image's {path} is not a directory, refused: the runtime mounts onto it"
    return None


def needed_roots(sysdirs: bool, proc: bool) -> Sequence[str]:
    """The image directories a run mounts over (see :func:`check_root`)."""
    return [p for p in PSEUDO if p == "/dev" or sysdirs or (p == "/proc" and proc)]
