"""The run specification: what to start, as Docker would start it, before any engine sees it.

Docker's rules, because users arrive with Docker's habits and images are built for them:

* **command**: ``--entrypoint`` replaces the image's ``Entrypoint`` and drops its ``Cmd``
  (``--entrypoint ""`` clears both); arguments after the image replace ``Cmd``; the process is
  ``Entrypoint + Cmd``.
* **environment**: the host's is not passed (only ``TERM``; all of it with ``--hostenv``), then
  the image ``Env``, then the host's launcher variables (:data:`PASS_ENV`: a batch system's and
  an MPI launcher's, which a rank needs to find its peers), then what plugins add, then
  ``--env-file`` files in order, then ``-e`` (``-e NAME`` takes the host's value). ``PATH``
  and ``HOME`` get Docker's defaults.
* **user**: ``-u``/``User`` is ``name|uid[:group|gid]`` looked up in the container's own account
  files (or the ``--hostauth`` copies), read without following links out of the root. A rank
  that a PMIx server started runs as the invoking user unless ``-u`` says otherwise (the
  server checks who its clients are: :func:`ucore.running.launcher.pmix_client`).
* **mounts**: the "sysdirs" (udocker's default host binds), the account files, ``--bindhome``,
  the rendezvous directories of an MPI launcher that started the run
  (:mod:`ucore.running.launcher`), then ``-v`` volumes; a later mount of the same target wins, and
  targets are resolved inside the root, so an image symlink cannot aim a bind at the host. Mounts
  come ordered parents first.

What the image says is input like any other (safety rule 9): a ``WorkingDir`` under ``/proc``,
``/sys`` or ``/dev`` (``/proc/self/fd/N`` names a host directory) is refused, ``Volumes`` is
ignored, and nothing is written outside the root.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from ucore.running import hostauth, hostfiles, launcher
from ucore.storage import inroot
from ucore.values.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    IntegrityError,
    PluginError,
    UsageError,
)
from ucore.values.model import Container, DeviceNode, DeviceRequest, Mount, RunSpec

if TYPE_CHECKING:
    from ucore.session import Session

#: Docker's ``PATH`` for images that set none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: udocker's default host binds, each only where the host has it.
SYSDIRS = ("/dev", "/proc", "/sys", "/etc/resolv.conf", "/etc/host.conf", "/lib/modules")
_MAX_UID = 2**32 - 2
#: Host variables every run passes, even without ``--hostenv`` (shell patterns): what Slurm,
#: the PMI/PMIx wire-up, Open MPI, MPICH, Intel MPI, UCX, libfabric and GPU selection hand a
#: job step. ``pass_env`` in ucore.conf or ``UCORE_PASS_ENV`` (space-separated) replaces the
#: list; an empty value passes none.
PASS_ENV = (
    "SLURM_*",
    "SLURMD_*",
    "PMI_*",
    "PMIX_*",
    "PMIX",
    "OMPI_*",
    "OPAL_*",
    "PRTE_*",
    "MPICH_*",
    "HYDRA_*",
    "I_MPI_*",
    "UCX_*",
    "FI_*",
    "NCCL_*",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
)
#: Characters of an ``--env-file``: Linux takes at most 2 MiB of arguments and environment.
MAX_ENV_FILE = 4 << 20


class RunOptions(NamedTuple):
    """What the command line asked for (``ucore run``'s flags), engine-neutral."""

    command: tuple[str, ...] = ()
    #: None: the image's; ``""``: none at all.
    entrypoint: Optional[str] = None
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    hostenv: bool = False
    #: Patterns of host variables passed anyway (:data:`ucore.running.runspec.PASS_ENV` unless
    #: configured).
    pass_env: tuple[str, ...] = PASS_ENV
    workdir: Optional[str] = None
    user: Optional[str] = None
    volumes: tuple[str, ...] = ()
    #: Host or container paths to leave out of the sysdirs and volumes (udocker's ``--novol``).
    novol: tuple[str, ...] = ()
    #: ``--device`` values: ``/dev`` paths, and requests for provider plugins: ``KIND[=WHICH]``
    #: text, or a :class:`~ucore.values.model.DeviceRequest` a plugin's own flag made (``--gpus``).
    devices: tuple[str | DeviceRequest, ...] = ()
    hostauth: bool = True
    sysdirs: bool = True
    #: False: ignore the image config entirely (``--nometa``).
    meta: bool = True
    bindhome: bool = False
    cpuset: Optional[str] = None
    kernel: Optional[str] = None
    #: Bind the rendezvous directories a launcher's variables name (``launcher_binds``).
    launcher_binds: bool = True


class _Account(NamedTuple):
    uid: int
    gid: int
    home: str


def build(
    session: Session,
    container: Container,
    image_config: Mapping[str, Any],
    opts: RunOptions,
    environ: Optional[Mapping[str, str]] = None,
) -> RunSpec:
    """The complete spec for one run: Docker's rules, then what ``ucore_prepare`` adds."""
    environ = os.environ if environ is None else environ
    root = Path(container.root)
    meta = _runtime_config(image_config) if opts.meta else {}
    argv = _argv(meta, opts)
    accounts = (
        hostauth.host_accounts(root, Path(container.dir) / "hostauth")
        if opts.hostauth
        else hostauth.container_accounts(root)
    )
    user_text = opts.user if opts.user is not None else _string(meta, "User") or None
    if opts.user is None and launcher.pmix_client(environ):
        user_text = f"{os.getuid()}:{os.getgid()}"
    uid, gid, home = _user(user_text, accounts, from_image=opts.user is None)
    env, chosen = _environment(meta, opts, environ)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", home)
    mounts = [
        *_sysdirs(root, Path(container.dir) / "hostfiles", opts),
        *accounts.mounts,
        *_home(opts),
        *(launcher.mounts(environ) if opts.launcher_binds else ()),
        *map(parse_volume, opts.volumes),
    ]
    mounts = [m for m in mounts if m.source not in opts.novol and m.target not in opts.novol]
    nodes = [d for d in opts.devices if isinstance(d, str) and d.startswith("/")]
    asked = [d for d in opts.devices if d not in nodes]
    spec = RunSpec(
        argv=argv,
        env=tuple(env.items()),
        cwd="/",
        uid=uid,
        gid=gid,
        mounts=place(root, mounts),
        devices=tuple(map(parse_device, nodes)),
        terminal=os.isatty(0),
        kernel=opts.kernel or None,
        cpuset=check_cpuset(opts.cpuset) if opts.cpuset else None,
        requests=_requests(session, container, asked),
    )
    spec = merge(root, spec, session.prepare(container, spec), chosen)
    workdir = opts.workdir if opts.workdir is not None else _string(meta, "WorkingDir") or "/"
    spec = spec._replace(cwd=_workdir(root, workdir, spec.mounts, opts.workdir is None))
    check_command(root, spec)
    return spec


def merge(
    root: Path, spec: RunSpec, results: Iterable[Mapping[str, Any]], chosen: Iterable[str] = ()
) -> RunSpec:
    """Add what ``ucore_prepare`` implementations returned. Their mounts come before the
    command line's (so ``-v`` wins a clash), their environment after the image's but never over
    what the user set (``chosen``)."""
    mounts: list[Mount] = []
    devices = list(spec.devices)
    env = dict(spec.env)
    keep = set(chosen)
    for result in results:
        for m in result.get("mounts") or ():
            if not isinstance(m, Mount):
                raise PluginError(f"a ucore_prepare implementation returned {m!r} as a mount")
            mounts.append(m)
        for d in result.get("devices") or ():
            if not isinstance(d, DeviceNode):
                raise PluginError(f"a ucore_prepare implementation returned {d!r} as a device")
            devices.append(d)
        for name, value in dict(result.get("env") or {}).items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise PluginError(f"a ucore_prepare implementation returned env {name!r}")
            if name not in keep:
                env[name] = value
    if not mounts and devices == list(spec.devices) and env == dict(spec.env):
        return spec
    return spec._replace(
        mounts=place(root, [*mounts, *spec.mounts]),
        devices=tuple(devices),
        env=tuple(env.items()),
    )


# --- the image config -----------------------------------------------------------------------


def _runtime_config(image_config: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = image_config.get("config") or {}
    if not isinstance(meta, dict):
        raise IntegrityError("the image config's 'config' section is not an object")
    return meta


def _string(meta: Mapping[str, Any], key: str) -> str:
    value = meta.get(key) or ""
    if not isinstance(value, str):
        raise IntegrityError(f"the image config's {key} is not a string")
    return _no_nul(value, key)


def _strings(meta: Mapping[str, Any], key: str) -> list[str]:
    value = meta.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IntegrityError(f"the image config's {key} is not a list of strings")
    for v in value:
        _no_nul(v, key)
    return value


def _no_nul(value: str, key: str) -> str:
    """No path, argument or environment entry can hold a NUL byte: refused here, rather than
    failing later in a stat, an ``execve`` or a runtime's JSON."""
    if "\0" in value:
        raise IntegrityError(f"the image config's {key} contains a NUL byte")
    return value


def _argv(meta: Mapping[str, Any], opts: RunOptions) -> tuple[str, ...]:
    if opts.entrypoint is not None:
        entrypoint = [opts.entrypoint] if opts.entrypoint else []
        cmd = list(opts.command)
    else:
        entrypoint = _strings(meta, "Entrypoint")
        cmd = list(opts.command) or _strings(meta, "Cmd")
    argv = tuple(entrypoint + cmd)
    if not argv:
        raise UsageError("no command to run: the image names none, so give one after the image")
    return argv


# --- environment ----------------------------------------------------------------------------


def _environment(
    meta: Mapping[str, Any], opts: RunOptions, environ: Mapping[str, str]
) -> tuple[dict[str, str], set[str]]:
    """The environment, and the names the user set explicitly (which plugins must not
    override)."""
    env = dict(environ) if opts.hostenv else {k: environ[k] for k in ("TERM",) if k in environ}
    for item in _strings(meta, "Env"):
        name, _, value = item.partition("=")
        if name:
            env[name] = value
    if opts.pass_env and not opts.hostenv:
        env.update(passed(environ, opts.pass_env))
    chosen: set[str] = set()
    for path in opts.env_files:
        for name, value in parse_env_file(path, environ):
            env[name] = value
            chosen.add(name)
    for item in opts.env:
        pair = parse_env(item, environ, "-e")
        if pair is not None:
            env[pair[0]] = pair[1]
            chosen.add(pair[0])
    return env, chosen


def passed(environ: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """The host variables matching ``patterns`` (``SLURM_*``: a prefix; else the name)."""
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    names = {p for p in patterns if not p.endswith("*")}
    return {k: v for k, v in environ.items() if k in names or (prefixes and k.startswith(prefixes))}


def parse_env(text: str, environ: Mapping[str, str], where: str) -> Optional[tuple[str, str]]:
    """``NAME=VALUE``, or ``NAME`` for the host's value (None when the host has none)."""
    name, eq, value = text.partition("=")
    if not name:
        raise UsageError(f"{where}: no variable name in {text!r}")
    if any(c.isspace() for c in name):
        raise UsageError(f"{where}: variable name {name!r} contains whitespace")
    if eq:
        return name, value
    return (name, environ[name]) if name in environ else None


def parse_env_file(path: str, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Docker's env-file format: ``NAME=VALUE`` or ``NAME`` per line, ``#`` comments, values
    taken verbatim (no quotes, no expansion). As Docker reads it, lines end at ``\\n`` only
    (``splitlines`` would also cut a value at a form feed), a ``\\r`` before it is dropped, and a
    byte order mark is not part of the first name. It can be a pipe (``<(...)``), so its size
    is known only by reading: at most :data:`MAX_ENV_FILE` characters are."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read(MAX_ENV_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--env-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(text) > MAX_ENV_FILE:
        raise UsageError(f"--env-file {path}: larger than {MAX_ENV_FILE >> 20} MiB")
    pairs = []
    for number, raw in enumerate(text.split("\n"), 1):
        where = f"--env-file {path} line {number}"
        line = (raw[:-1] if raw.endswith("\r") else raw).lstrip()
        if not line or line.startswith("#"):
            continue
        if "\0" in line:
            raise UsageError(f"{where}: NUL byte, which no environment can hold")
        pair = parse_env(line, environ, where)
        if pair is not None:
            pairs.append(pair)
    return pairs


# --- user -----------------------------------------------------------------------------------


def _user(
    text: Optional[str], accounts: hostauth.Accounts, from_image: bool
) -> tuple[Optional[int], Optional[int], str]:
    """(uid, gid, home); uid None means the engine's default, emulated root."""
    if not text:
        root = _lookup(accounts.passwd, "0", by_id=True)
        return None, None, root.home if root else "/root"
    user, _, group = text.partition(":")
    where = f"the image's User {text!r}" if from_image else f"-u {text}"
    error = IntegrityError if from_image else UsageError
    if _is_number(user):
        uid = _id(user, where, error)
        entry = _lookup(accounts.passwd, user, by_id=True)
    else:
        entry = _lookup(accounts.passwd, user, by_id=False)
        if entry is None:
            raise error(f"{where}: no user {user!r} in the container's /etc/passwd")
        uid = entry.uid
    if not group:
        gid = entry.gid if entry else 0
    elif _is_number(group):
        gid = _id(group, where, error)
    else:
        found = _lookup(accounts.group, group, by_id=False, fields=3)
        if found is None:
            raise error(f"{where}: no group {group!r} in the container's /etc/group")
        gid = found.uid
    return uid, gid, entry.home if entry and entry.home else "/"


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²``, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _number(text: str) -> Optional[int]:
    """``text`` as a user or group id, or None when it is not one (``int`` would also spend
    quadratic time on, or refuse, a number thousands of digits long)."""
    if not _is_number(text) or len(text) > len(str(_MAX_UID)):
        return None
    value = int(text)
    return value if value <= _MAX_UID else None


def _id(text: str, where: str, error: type[UsageError] | type[IntegrityError]) -> int:
    value = _number(text)
    if value is None:
        raise error(f"{where}: not a valid user or group id")
    return value


def _lookup(text: str, key: str, by_id: bool, fields: int = 7) -> Optional[_Account]:
    """The first entry of a passwd (or, with ``fields=3``, group) file matching ``key``;
    entries whose id is not a valid one are skipped."""
    for line in text.splitlines():
        parts = line.split(":")
        number = _number(parts[2]) if len(parts) >= fields else None
        if number is None:
            continue
        if (parts[2] if by_id else parts[0]) == key:
            gid = _number(parts[3]) if fields == 7 else None
            return _Account(number, number if gid is None else gid, parts[5] if fields == 7 else "")
    return None


# --- mounts ---------------------------------------------------------------------------------


def parse_volume(text: str) -> Mount:
    """``-v host[:container][:ro|:rw]``; the host path must exist (it is made absolute and
    real), the container path must be absolute."""
    parts = text.split(":")
    readonly = False
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        readonly = parts.pop() == "ro"
    if len(parts) == 1:
        parts.append(parts[0])
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise UsageError(f"-v {text}: expected HOST[:CONTAINER][:ro|:rw]")
    host, target = parts
    if not target.startswith("/"):
        raise UsageError(f"-v {text}: the container path {target!r} must be absolute")
    host = os.path.abspath(os.path.expanduser(host))
    if not os.path.exists(host):
        raise UsageError(f"-v {text}: {host} does not exist on this host")
    return Mount(os.path.realpath(host), posixpath.normpath(target), readonly)


def _requests(
    session: Session, container: Container, asked: Sequence[str | DeviceRequest]
) -> tuple[DeviceRequest, ...]:
    """Device requests for the provider plugins: the container's recorded ones and the
    command line's (see :mod:`ucore.plugins.devices`, imported only when there is one)."""
    if not asked and not container.devices:
        return ()
    from ucore.plugins import devices

    return devices.requests(session, container.devices, asked)


def parse_device(text: str) -> DeviceNode:
    """``--device HOST[:CONTAINER]``."""
    path, _, target = text.partition(":")
    if not path.startswith("/") or (target and not target.startswith("/")):
        raise UsageError(f"--device {text}: expected absolute HOST[:CONTAINER] paths")
    if not os.path.exists(path):
        raise UsageError(f"--device {text}: {path} does not exist on this host")
    return DeviceNode(path, target or None)


def _sysdirs(root: Path, state_dir: Path, opts: RunOptions) -> list[Mount]:
    """The host's system directories, and private copies of its name-resolution files (see
    :mod:`ucore.running.hostfiles`). One the image has as a file is left out, as the image's
    affair."""
    if not opts.sysdirs:
        return []
    mounts = [
        Mount(os.path.realpath(p), p)
        for p in SYSDIRS
        if p not in hostfiles.NAME_FILES and os.path.isdir(p) and _directory_or_none(root, p)
    ]
    return [*mounts, *hostfiles.name_files(root, state_dir)]


def _directory_or_none(root: Path, path: str) -> bool:
    try:
        mode = inroot.resolve(root, path).mode
    except OSError:
        return False
    return mode is None or stat.S_ISDIR(mode)


def _home(opts: RunOptions) -> list[Mount]:
    if not opts.bindhome:
        return []
    home = os.path.expanduser("~")
    if not os.path.isdir(home):
        raise UsageError(f"--bindhome: the home directory {home} does not exist")
    return [Mount(os.path.realpath(home), home)]


def place(root: Path, mounts: Sequence[Mount]) -> tuple[Mount, ...]:
    """Resolve each target inside the root (a target that is an image symlink lands where the
    link points, inside the root); the last mount of a target wins; parents first."""
    placed: dict[str, Mount] = {}
    walks: dict[str, inroot.Walk] = {}
    for m in mounts:
        try:
            walk = inroot.resolve(root, m.target)
            target = walk.path
        except OSError as exc:
            raise UsageError(f"cannot mount {m.source} on {m.target}: {exc}") from None
        if target == "/":
            raise UsageError(f"cannot mount {m.source} over the container's root directory")
        if inroot.under(target, "/proc") and (target, m.source) != ("/proc", "/proc"):
            if inroot.under(m.target, "/proc"):  # what the user asked for
                raise UsageError(
                    f"cannot mount {m.source} on {m.target}: it is under /proc,"
                    " which shows the host's processes"
                )
            # the image's doing: a default mount (/dev) or a volume led there by its links
            raise IntegrityError(
                f"the image's {m.target} is a symbolic link (or lies under one) to {target},"
                f" under /proc, which shows the host's processes: refused to mount {m.source}"
                " there"
            )
        placed.pop(target, None)
        placed[target] = m._replace(target=target)
        walks[target] = walk
    for target, m in placed.items():
        outer = covering(posixpath.dirname(target), placed.values())
        if outer is None:  # what is there is the image's, not another mount's
            _same_kind(m, walks[target])
    return tuple(sorted(placed.values(), key=lambda m: m.target.count("/")))


def _same_kind(m: Mount, walk: inroot.Walk) -> None:
    """A directory is mounted only on a directory, anything else only on a non-directory, as
    the kernel's bind mount requires, and a missing target only below a directory (the image
    may have a file where the target needs a directory, ``/usr/local/nvidia``): runc and crun
    would fail with two lines of their own, and PRoot would quietly hide the image's directory
    behind a file or leave the mount out. The default mounts were left out where they do not
    fit (:func:`_sysdirs`); a plugin's mount (``transient``) that does not fit is the image's
    doing, anything else what the user asked."""
    error = IntegrityError if m.transient else UsageError
    if walk.blocked:
        parts = walk.path.split("/")
        existing = "/".join(parts[: len(parts) - walk.missing])
        raise error(
            f"cannot mount {m.source} on {walk.path}: in the image {existing} is not a directory"
        )
    if walk.missing:
        return
    if walk.mode is None or stat.S_ISDIR(walk.mode) == os.path.isdir(m.source):
        return
    there = "a directory" if stat.S_ISDIR(walk.mode) else "not a directory"
    source = "the directory" if os.path.isdir(m.source) else "the file"
    raise error(f"cannot mount {source} {m.source} on {walk.path}: in the image it is {there}")


def covering(path: str, mounts: Iterable[Mount]) -> Optional[Mount]:
    """The mount whose target holds ``path`` (the deepest one), if any."""
    best = None
    for m in mounts:
        if inroot.under(path, m.target) and (best is None or len(m.target) > len(best.target)):
            best = m
    return best


# --- working directory, command, CPUs ---------------------------------------------------------


def _workdir(root: Path, text: str, mounts: Sequence[Mount], from_image: bool) -> str:
    """Canonical working directory; created inside the root when missing (as Docker does)."""
    where = f"the image's WorkingDir {text!r}" if from_image else f"-w {text}"
    if not text.startswith("/"):
        if not from_image:
            raise UsageError(f"{where}: the working directory must be an absolute path")
        text = "/" + text
    path = posixpath.normpath(text)
    try:
        walk = inroot.resolve(root, path)
    except OSError as exc:
        raise UsageError(f"{where}: {exc}") from None
    for candidate in (path, walk.path):
        if any(inroot.under(candidate, p) for p in inroot.PSEUDO):
            error = IntegrityError if from_image else UsageError
            raise error(f"{where}: a working directory under /proc, /sys or /dev is refused")
    if covering(path, mounts) is not None:
        return path
    if covering(walk.path, mounts) is not None:
        return walk.path
    if walk.missing == 0:
        if walk.mode is not None and not stat.S_ISDIR(walk.mode):
            raise UsageError(f"{where}: not a directory in the container")
        return walk.path
    try:
        return inroot.make_dirs(root, path)
    except OSError as exc:
        raise UsageError(f"{where}: cannot create it in the container: {exc}") from None


def check_command(root: Path, spec: RunSpec) -> None:
    """Fail before starting anything when the command is not there (127) or cannot be run
    (126), as a shell would: every engine then reports it the same way."""
    command = spec.argv[0]
    if not command:  # not the PATH's first directory, as joining it would make it
        raise CommandNotFoundError("'': command not found in the container (an empty name)")
    if "/" in command:
        candidates = [posixpath.join(spec.cwd, command)]
    else:
        search = dict(spec.env).get("PATH", DEFAULT_PATH)
        candidates = [posixpath.join(d, command) for d in search.split(":") if d.startswith("/")]
    unusable = None
    for path in candidates:
        found = _executable(root, posixpath.normpath(path), spec.mounts)
        if found:
            return
        if found is not None and unusable is None:
            unusable = path
    if unusable is not None:
        raise CommandNotExecutableError(f"{unusable} in the container is not executable")
    where = "" if "/" in command else " (PATH=" + dict(spec.env).get("PATH", DEFAULT_PATH) + ")"
    raise CommandNotFoundError(f"{command}: command not found in the container{where}")


def _executable(root: Path, path: str, mounts: Sequence[Mount]) -> Optional[bool]:
    """True: an executable file; False: something that cannot be executed; None: nothing."""
    mode: Optional[int] = None
    mount = covering(path, mounts)
    if mount is None:
        try:
            walk = inroot.resolve(root, path)
        except OSError:
            return None
        mount = covering(walk.path, mounts)
        path = walk.path
        mode = walk.mode if walk.missing == 0 else None
    if mount is not None:
        host = mount.source + path[len(mount.target.rstrip("/")) :]
        try:
            mode = os.stat(host).st_mode
        except OSError:
            return None
    if mode is None:
        return None
    return stat.S_ISREG(mode) and bool(mode & 0o111)


def parse_cpuset(text: str) -> frozenset[int]:
    """``0-3,6`` (Docker's and taskset's list format): ASCII numbers, both ends of a range."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            if not _is_number(low) or (dash and not _is_number(high)):
                raise ValueError
            first, last = int(low), int(high or low)
            if first < 0 or last < first or last - first > 65536:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise UsageError(f"--cpuset-cpus {text}: expected a list like 0-3,6") from None
    return frozenset(cpus)


def check_cpuset(text: str) -> str:
    """Refuse CPUs this job may not use (a batch system's allocation), before starting."""
    cpus = parse_cpuset(text)
    allowed = os.sched_getaffinity(0)
    outside = sorted(cpus - allowed)
    if outside:
        raise UsageError(
            f"--cpuset-cpus {text}: CPU {outside[0]} is not available to this process"
            f" (allowed: {','.join(map(str, sorted(allowed)))})"
        )
    return text
