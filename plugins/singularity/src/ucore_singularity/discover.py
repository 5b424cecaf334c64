"""Finding Apptainer or Singularity and deciding whether it can run ucore's containers here.

Sites install one of three flavours: Apptainer (the Linux Foundation's, the binary
``apptainer``, often with a ``singularity`` link), SingularityCE (Sylabs', ``singularity``) or
an old Singularity 2/3. They differ in ways the engine must know:

* the prefix of the variables that set the container's environment (``APPTAINERENV_`` or
  ``SINGULARITYENV_``) and of the configuration file (``apptainer.conf``/``singularity.conf``);
* whether the install is setuid (``starter-suid``) or runs in user namespaces only: without
  setuid, a host whose user namespaces are off cannot run anything;
* the options a run needs (``--no-mount``, ``--fakeroot`` without setuid, ``--userns``) came
  with Apptainer 1.0 and SingularityCE 3.10: older ones are refused with the reason.

The site's configuration file can forbid what the engine does (``allow container dir = no``
forbids sandboxes, ``user bind control = no`` forbids binds): read defensively, a line the
engine cannot parse never makes it refuse. What the probe learns is cached per binary (path,
size, mtime, inode) in the store, so a run does not pay for ``--version`` again.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import NamedTuple, Optional

from ucore.plugins.probecache import ProbeCache, run_probe
from ucore.running import spawn

#: The oldest versions with ``--no-mount``, ``--userns`` and unprivileged ``--fakeroot``.
MINIMUM = {"apptainer": (1, 0), "singularity": (3, 10)}
HOW_TO_GET = (
    "install Apptainer (https://apptainer.org; Debian unstable: apt install apptainer) or"
    " SingularityCE, or point UCORE_SINGULARITY (or 'path' in the [singularity] section of"
    " ucore.conf) at its binary"
)


class Runtime(NamedTuple):
    """One Apptainer or Singularity binary and what the probe learnt of it."""

    path: str
    #: ``apptainer`` or ``singularity``: the environment prefix and config name follow it.
    flavour: str
    version: str
    #: A setuid starter is installed and allowed (``allow setuid = yes``).
    setuid: bool
    #: ``--fakeroot`` is possible here (setuid, or user namespaces and a subuid range or the
    #: root-mapped namespace Apptainer 1.1+ falls back to).
    fakeroot: bool
    #: The config file read, or "" where none was found.
    config: str

    @property
    def env_prefix(self) -> str:
        return "APPTAINERENV_" if self.flavour == "apptainer" else "SINGULARITYENV_"


def locate(environ: dict[str, str], configured: Optional[str]) -> tuple[Optional[str], str]:
    """(path or None, why that one or why none): ``UCORE_SINGULARITY``, then ``configured``
    (``path`` in ``[singularity]``), then ``apptainer`` and then ``singularity`` on ``PATH``."""
    chosen = environ.get("UCORE_SINGULARITY") or configured
    if chosen:
        setting = "UCORE_SINGULARITY" if environ.get("UCORE_SINGULARITY") else "ucore.conf"
        path = os.path.expanduser(chosen)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path), f"set by {setting}"
        return None, f"the configured {chosen} ({setting}) is not an executable file"
    search = environ.get("PATH", os.defpath)
    for name in ("apptainer", "singularity"):
        found = spawn.find_program(name, search)
        if found:
            return os.path.abspath(found), "found on PATH"
    return None, f"no apptainer or singularity on PATH: {HOW_TO_GET}"


def parse_version(text: str) -> tuple[str, str]:
    """(flavour, version) from ``--version`` output: ``apptainer version 1.4.5``,
    ``singularity-ce version 4.1.0``, ``singularity version 3.8.7``."""
    match = re.search(r"(apptainer|singularity)(?:-ce)?\s+version\s+v?([\w.+~-]+)", text, re.I)
    if match:
        return match.group(1).lower(), match.group(2)
    bare = re.search(r"\b(\d+\.\d+(?:\.\d+)?)", text)
    return "singularity", bare.group(1) if bare else "unknown"


def too_old(flavour: str, version: str) -> Optional[str]:
    """Why ``version`` cannot be used, or None."""
    numbers = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    minimum = MINIMUM.get(flavour, MINIMUM["singularity"])
    if len(numbers) == 2 and numbers < minimum:
        need = ".".join(map(str, minimum))
        return f"{flavour} {version} is too old: the engine needs {need} or later (--no-mount)"
    return None


def read_config(path: Path) -> dict[str, str]:
    """``key = value`` lines of an apptainer.conf/singularity.conf (the last one of a key
    wins; repeated keys such as ``bind path`` are not needed here); {} when unreadable."""
    values: dict[str, str] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith("#"):
                values[" ".join(key.split()).lower()] = value.strip().lower()
    return values


def config_path(path: str, flavour: str) -> Optional[Path]:
    """The runtime's configuration file: ``$PREFIX/etc/FLAVOUR/FLAVOUR.conf`` next to its
    installation (``/usr/bin/apptainer`` reads ``/etc/apptainer/apptainer.conf``)."""
    prefix = Path(os.path.realpath(path)).parent.parent
    candidates = [prefix / "etc" / flavour / f"{flavour}.conf"]
    if prefix == Path("/usr"):
        candidates.insert(0, Path("/etc") / flavour / f"{flavour}.conf")
    return next((c for c in candidates if c.is_file()), None)


def forbidden(config: dict[str, str], root: bool) -> Optional[str]:
    """Why the site's configuration forbids what the engine needs, or None."""
    if config.get("allow container dir") == "no":
        return "the site's configuration forbids sandboxes (allow container dir = no)"
    if not root and config.get("user bind control") == "no":
        return "the site's configuration forbids user binds (user bind control = no)"
    return None


def user_namespaces() -> bool:
    """Whether this user may make user namespaces (the sysctls; AppArmor is seen at run)."""
    for path, off in (
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
    ):
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip() == off:
                return False
    return True


def setuid_starter(path: str, flavour: str) -> bool:
    """A setuid ``starter-suid`` is installed next to the runtime's libexec files."""
    prefix = Path(os.path.realpath(path)).parent.parent
    for libexec in ("libexec", "lib/x86_64-linux-gnu", "lib64", "lib"):
        starter = prefix / libexec / flavour / "bin" / "starter-suid"
        with contextlib.suppress(OSError):
            if starter.stat().st_mode & 0o4000 and starter.stat().st_uid == 0:
                return True
    return False


class Discovery:
    """Inspects runtime binaries, caching ``--version`` in ``cache_file``."""

    def __init__(self, cache_file: Path) -> None:
        self.cache = ProbeCache(cache_file)

    def inspect(self, path: str) -> tuple[Optional[Runtime], Optional[str]]:
        """(the runtime, None) or (None, why it cannot run ucore's containers here)."""
        st = os.stat(path)
        key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        cached = self.cache.get(key)
        if isinstance(cached, str):
            flavour, version = parse_version(cached)
        else:
            result = run_probe([path, "--version"], {"PATH": os.environ.get("PATH", os.defpath)})
            text = (result.stdout or "") + (result.stderr or "")
            if result.returncode != 0:
                return None, f"{path} --version failed: {text.strip()[-200:]}"
            self.cache.put(key, text)
            flavour, version = parse_version(text)
        why = too_old(flavour, version)
        if why:
            return None, why
        conf = config_path(path, flavour)
        config = read_config(conf) if conf else {}
        root = os.geteuid() == 0
        setuid = setuid_starter(path, flavour) and config.get("allow setuid", "yes") == "yes"
        userns = user_namespaces()
        if not root and not setuid and not userns:
            return None, (
                f"{flavour} {version} at {path} has no setuid starter and this host allows no"
                " unprivileged user namespaces"
            )
        why = forbidden(config, root)
        if why:
            return None, why
        fakeroot = root or setuid or userns
        return Runtime(path, flavour, version, setuid, fakeroot, str(conf or "")), None
