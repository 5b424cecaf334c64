"""Finding runc and crun and learning whether they can run containers here, and if not, why.

What decides it, checked in this order so that the reason given is the precise one:

* **The binary**: ``$UCORE_RUNC``/``$UCORE_CRUN``, else ``path`` in the ``[runc]``/``[crun]``
  section of ``ucore.conf``, else ``PATH``, else the ``sbin`` directories (Debian installs runc in
  ``/usr/sbin``, which is not on a user's ``PATH``).
* **CVE-2024-21626** (runc only; a descriptor leaked into the container gave it the host's
  filesystem): fixed in runc 1.1.12. An older version number is accepted only where the
  distribution says it backported the fix: the changelog of the Debian/Ubuntu package that owns
  the binary names the CVE (Debian 12's ``1.1.5+ds1-1+deb12u1`` does).
* **User namespaces**: ``user.max_user_namespaces=0`` disables them for everyone;
  ``kernel.unprivileged_userns_clone=0`` (older Debian and Ubuntu kernels) for users other than
  root; ``kernel.apparmor_restrict_unprivileged_userns=1`` (Ubuntu 23.10 and later) unless an
  AppArmor profile allows the runtime binary.
* **A trial run**: a container of the host's own ``/usr`` running ``true``, with the very
  configuration ucore generates. It catches what no sysctl tells (AppArmor's verdict for this
  binary, seccomp filters of an enclosing container, a kernel without some mount feature).

crun up to at least 1.8 refuses every container on a host with hybrid cgroups (v1 plus a v2
hierarchy holding controllers at ``/sys/fs/cgroup/unified``): "cgroups in hybrid mode not
supported, drop all controllers from cgroupv2", whatever ``--cgroup-manager`` says, because it
checks before looking at the manager. It decides the mode with ``statfs`` on
``/sys/fs/cgroup/unified``, so ucore starts it in a private mount namespace where an empty tmpfs
hides that hierarchy (:func:`hide_cgroup2`); rootless crun then sees plain v1 cgroups it may
not write to, which it ignores.

Version and backport findings are cached per binary, trial results per binary, kernel, user
kind and the sysctls above, in ``$UCORE_DIR/cache/runc.json``: a run pays for none of this.
A failed trial is tried again after :data:`RETRY_FAILED` seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

from ucore.plugins import probecache
from ucore.plugins.probecache import ProbeCache
from ucore.running import spawn

if TYPE_CHECKING:
    import subprocess

#: The runc release that fixed CVE-2024-21626.
FIXED_RUNC = (1, 1, 12)
CVE = "CVE-2024-21626"
#: The ucore-runc wheel carries no runtime (unlike ucore-proot): Debian's runc and crun need
#: glibc 2.34, which would exclude the RHEL 7 and 8 clusters the wheels are for, and a runtime
#: is a security boundary a site should patch itself.
CARRIES_NONE = "the ucore-runc wheel carries none, it uses the host's"
HOW_TO_GET = {
    "runc": "install your distribution's runc package (apt install runc, dnf install runc), or"
    " point UCORE_RUNC (or 'path' in the [runc] section of ucore.conf) at a runc binary"
    f" ({CARRIES_NONE})",
    "crun": "install your distribution's crun package (apt install crun, dnf install crun), or"
    " point UCORE_CRUN (or 'path' in the [crun] section of ucore.conf) at a crun binary"
    f" ({CARRIES_NONE})",
}
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
#: Seconds after which a failed trial run is repeated (the node may have been fixed).
RETRY_FAILED = 600
_UNIFIED = "/sys/fs/cgroup/unified"
_SYSCTLS = {
    "user.max_user_namespaces": "/proc/sys/user/max_user_namespaces",
    "kernel.unprivileged_userns_clone": "/proc/sys/kernel/unprivileged_userns_clone",
    "kernel.apparmor_restrict_unprivileged_userns": (
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
    ),
}
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


class Runtime(NamedTuple):
    """One runtime binary and what its version says."""

    path: str
    kind: str
    version: str
    #: The Debian/Ubuntu package changelog entry naming the CVE fix, when a backport is why an
    #: older runc is accepted.
    backport: Optional[str] = None

    @property
    def numbers(self) -> tuple[int, ...]:
        return version_numbers(self.version)


def version_numbers(version: str) -> tuple[int, ...]:
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(x or 0) for x in found.groups()) if found else ()


def parse_version(text: str) -> str:
    """``runc version 1.1.5+ds1`` / ``crun version 1.8.1`` -> the version; "unknown" else."""
    found = re.search(r"\bversion\s+v?(\d+\.\d+[\w.+~-]*)", text)
    return found.group(1) if found else "unknown"


def locate(
    kind: str, environ: Optional[dict[str, str]] = None, configured: Optional[str] = None
) -> tuple[Optional[str], str]:
    """(path or None, why not): ``UCORE_RUNC``/``UCORE_CRUN`` first, then ``configured``
    (``path`` in the ``[runc]``/``[crun]`` section of ucore.conf), then ``PATH`` and the
    sbin directories."""
    env = dict(os.environ if environ is None else environ)
    chosen = env.get(f"UCORE_{kind.upper()}") or configured
    if chosen:
        path = os.path.expanduser(chosen)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path), ""
        return None, f"the configured {kind} {chosen} is not an executable file"
    search = os.pathsep.join([env.get("PATH", os.defpath), *SBIN])
    found = spawn.find_program(kind, search)
    if found:
        return os.path.abspath(found), ""
    return None, f"no {kind} on PATH or in {', '.join(SBIN)}: {HOW_TO_GET[kind]}"


# --- what the host allows ---------------------------------------------------------------------


def sysctls() -> dict[str, Optional[int]]:
    """The user-namespace sysctls (None where the kernel has no such setting)."""
    out: dict[str, Optional[int]] = {}
    for name, path in _SYSCTLS.items():
        try:
            with open(path) as f:
                out[name] = int(f.read().strip())
        except (OSError, ValueError):
            out[name] = None
    return out


def userns_refusal(values: dict[str, Optional[int]], privileged: bool) -> Optional[str]:
    """Why this host refuses the user namespace every run needs, as far as sysctls tell."""
    if values.get("user.max_user_namespaces") == 0:
        return "user namespaces are disabled on this host (sysctl user.max_user_namespaces=0)"
    if not privileged and values.get("kernel.unprivileged_userns_clone") == 0:
        return (
            "unprivileged user namespaces are disabled on this host"
            " (sysctl kernel.unprivileged_userns_clone=0)"
        )
    return None


def hybrid_controllers() -> Optional[str]:
    """The controllers of a hybrid host's v2 hierarchy, which crun refuses; None when the host
    is not hybrid or its v2 hierarchy holds no controller."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return None  # unified (v2 only)
    try:
        with open(f"{_UNIFIED}/cgroup.controllers") as f:
            return f.read().strip() or None
    except OSError:
        return None


def hide_cgroup2() -> None:
    """In the child about to become crun: a private mount namespace (and, unprivileged, a user
    namespace in which the user is root) where an empty tmpfs covers the v2 hierarchy of a
    hybrid host, so that crun takes the host for a v1 one. The ids of the config must then be
    this namespace's: the user is 0 here (see ``spec.identity``)."""
    import ctypes

    from ucore.values.errors import PluginError

    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWNS | (_CLONE_NEWUSER if uid else 0)) != 0:
        raise PluginError(
            "crun refuses hybrid cgroups and ucore cannot hide them from it:"
            f" unshare: {os.strerror(ctypes.get_errno())}"
        )
    if uid:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", None)):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text if text is not None else f"0 {gid} 1")
    for source, target, fstype, flags, data in (
        (None, b"/", None, _MS_REC | _MS_PRIVATE, None),
        (b"tmpfs", _UNIFIED.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"size=4k"),
    ):
        if libc.mount(source, target, fstype, flags, data) != 0:
            raise PluginError(
                "crun refuses hybrid cgroups and ucore cannot hide them from it:"
                f" mount {target.decode()}: {os.strerror(ctypes.get_errno())}"
            )


# --- CVE-2024-21626 ---------------------------------------------------------------------------


def cve_refusal(runtime: Runtime) -> Optional[str]:
    """Why this runc must not be used (one line), or None (crun never had this flaw)."""
    if runtime.kind != "runc" or runtime.backport or runtime.numbers >= FIXED_RUNC:
        return None
    fixed = ".".join(map(str, FIXED_RUNC))
    return (
        f"runc {runtime.version} ({runtime.path}) is older than {fixed}, which fixed {CVE}"
        " (a container could reach the host's files through a leaked descriptor), and no"
        f" distribution changelog says the fix was backported: install runc {fixed} or later,"
        " or point UCORE_RUNC at one"
    )


def debian_backport(
    path: str, cve: str = CVE, info: str = "/var/lib/dpkg/info", doc: str = "/usr/share/doc"
) -> Optional[str]:
    """The first line of the changelog of the Debian/Ubuntu package that installed ``path``, when
    that changelog names ``cve``: all its entries are at most the installed version, so the
    binary carries the fix. Only the package named like the binary is looked at (runc is
    packaged as "runc"), and only if it owns this very file."""
    import glob
    import gzip

    package = os.path.basename(path)
    wanted = {path, os.path.realpath(path)}
    listings = [os.path.join(info, f"{package}.list")]
    listings += glob.glob(os.path.join(glob.escape(info), glob.escape(package) + ":*.list"))
    for listing in listings:
        try:
            with open(listing) as f:
                files = {os.path.realpath(x) for x in f.read().splitlines() if x}
            if not wanted & files:
                continue
            with gzip.open(os.path.join(doc, package, "changelog.Debian.gz"), "rt") as f:
                text = f.read(4 << 20)
        except (OSError, EOFError, ValueError):
            continue
        if cve in text:
            return text.splitlines()[0].strip()
    return None


# --- the cached inspection --------------------------------------------------------------------


class Discovery:
    """Inspects runtimes and runs trials, caching what it learns in ``cache_file``."""

    def __init__(self, cache_file: Path) -> None:
        self.cache = ProbeCache(cache_file)

    def inspect(self, path: str, kind: str) -> Runtime:
        """The version of ``path`` (and a backport of the CVE fix); RuntimeError when it does not
        run."""
        key = binary_key(path)
        cached = self.cache.get(key)
        if isinstance(cached, dict) and cached.get("kind") == kind:
            with contextlib.suppress(KeyError, TypeError):
                return Runtime(path, kind, str(cached["version"]), cached["backport"])
        result = run_probe([path, "--version"])
        version = parse_version((result.stdout or "") + (result.stderr or ""))
        if result.returncode != 0 or version == "unknown":
            lines = [x for x in (result.stdout + result.stderr).splitlines() if x.strip()]
            raise RuntimeError(f"{path} --version fails: {lines[-1] if lines else 'no output'}")
        found = Runtime(path, kind, version)
        if kind == "runc" and found.numbers < FIXED_RUNC:
            found = found._replace(backport=debian_backport(path))
        self.cache.put(key, {"kind": kind, "version": found.version, "backport": found.backport})
        return found

    def trial(self, key: str, attempt: Callable[[], Optional[str]]) -> Optional[str]:
        """The cached outcome of ``attempt`` (None: the runtime works) for ``key``."""
        import time

        cached = self.cache.get(key)
        if isinstance(cached, dict) and "why" in cached:
            known = cached["why"]
            fresh = time.time() - float(cached.get("at", 0)) < RETRY_FAILED
            if known is None or (isinstance(known, str) and fresh):
                return known
        why = attempt()
        self.cache.put(key, {"why": why, "at": time.time()})
        return why


def binary_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def run_probe(
    argv: list[str], preexec: Optional[Callable[[], None]] = None
) -> subprocess.CompletedProcess[str]:
    """A probe with the runtimes' environment (see :func:`runtime_env`)."""
    return probecache.run_probe(argv, runtime_env(), preexec)


def runtime_env() -> dict[str, str]:
    """What the runtime itself runs with: a ``PATH`` that finds ``newuidmap``, nothing else
    (the container's environment is in its config)."""
    path = os.environ.get("PATH", os.defpath)
    return {"PATH": os.pathsep.join([path, "/usr/bin", "/bin", *SBIN])}
