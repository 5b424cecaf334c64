"""Finding proot and learning what the build at hand can do.

PRoot builds differ in ways that decide whether a container works:

* ``proot -V`` says whether the seccomp accelerator is built in (``seccomp_filter = yes``):
  without it every system call of the container stops in the tracer (Debian's 5.1.0).
* Builds older than the kernel's newer path system calls (``statx``, ``faccessat2``,
  ``openat2``, ``fchmodat2``, ``execveat``) let those through with the *guest* path untranslated:
  ``ls -l``, ``stat`` and bash's ``test -x`` then fail on every file of a recent image, and
  worse, act on host paths. Which of them a build translates is probed by running one such call
  on a path that exists only through a bind; the engine then makes the others fail with
  ``ENOSYS`` (see :mod:`ucore_proot.seccomp`), and the C library falls back to the older calls
  PRoot does translate.
* ``-k`` (fake kernel release) turns on PRoot's "kompat" layer, which in Debian's 5.1.0 and in
  upstream's source at the time of writing rejects ``newfstatat(fd, "", AT_EMPTY_PATH)`` with
  ``EINVAL``. glibc 2.33 and later implement ``fstat`` that way, so under ``-k`` every such
  program dies with "cannot stat shared object: Invalid argument". Probed on first use of
  ``--kernel``; a broken build is refused with that explanation.

Results are cached in the store per proot binary (path, size, mtime, inode) and kernel release,
so a run pays for none of this; a proot that does not run at all is not cached (the node may
be fixed by the next job).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from ucore.plugins.carried import Carried
from ucore.plugins.probecache import ProbeCache, run_probe
from ucore.running import spawn

if TYPE_CHECKING:
    import subprocess

#: What to tell a user who has no proot.
HOW_TO_GET = (
    "install your distribution's proot package (apt install proot, dnf install proot), or"
    " download a static build from https://proot-me.github.io and point UCORE_PROOT (or"
    " 'path' in the [proot] section of ucore.conf) at it"
)
#: Syscalls every PRoot build mishandles: ``clone3`` passes its flags in a structure that PRoot
#: does not read, so it would track the new process wrongly; glibc falls back to ``clone``.
ALWAYS_MASKED = ("clone3",)
#: Path syscalls newer than some PRoot builds, probed one by one.
PROBED = ("statx", "faccessat2", "openat2", "fchmodat2", "execveat")
#: Numbers the same on every architecture (allocated after the tables were unified).
_COMMON = {"clone3": 435, "openat2": 437, "faccessat2": 439, "fchmodat2": 452}
#: machine -> (AUDIT_ARCH_*, per-architecture syscall numbers).
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {"statx": 332, "execveat": 322, "newfstatat": 262}),
    "aarch64": (0xC00000B7, {"statx": 291, "execveat": 281, "newfstatat": 79}),
    "riscv64": (0xC00000F3, {"statx": 291, "execveat": 281, "newfstatat": 79}),
    "ppc64le": (0xC0000015, {"statx": 383, "execveat": 362, "newfstatat": 291}),
    "s390x": (0x80000016, {"statx": 379, "execveat": 354, "newfstatat": 293}),
}
_PROBE_DIR = "/.ucore-proot-probe"
#: Where the ucore-proot wheel's own proot lies under its carried/ folder.
CARRIED_PROOT = "bin/proot"


class Proot(NamedTuple):
    """One proot binary and what it supports."""

    path: str
    version: str
    #: The seccomp accelerator is built in (``-V``: ``seccomp_filter = yes``).
    seccomp: bool
    #: Syscalls this build passes through untranslated (to be made to fail with ENOSYS).
    untranslated: tuple[str, ...] = ()


def syscall_numbers() -> Optional[tuple[int, dict[str, int]]]:
    """(audit arch, name -> number) for this machine, or None where we have no table."""
    arch = ARCHES.get(os.uname().machine)
    if arch is None:
        return None
    return arch[0], {**_COMMON, **arch[1]}


def locate(
    environ: Optional[dict[str, str]] = None,
    configured: Optional[str] = None,
    carried: Optional[Carried] = None,
) -> tuple[Optional[str], str]:
    """(path or None, why that one or why none), in this order: ``UCORE_PROOT``, then
    ``configured`` (``path`` in the ``[proot]`` section of ucore.conf), then the proot the
    ucore-proot wheel carries (``carried``; by default read beside this module), then ``proot``
    on ``PATH``. The carried build comes before the host's: it is the one the wheel was
    tested with, and a cluster's ``PATH`` may hold anything; a site that wants the host's
    sets it."""
    env = dict(os.environ if environ is None else environ)
    chosen, setting = (
        (env["UCORE_PROOT"], "UCORE_PROOT")
        if env.get("UCORE_PROOT")
        else (
            configured,
            "path in the [proot] section of ucore.conf",
        )
    )
    if chosen:
        path = os.path.expanduser(chosen)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path), f"set by {setting}"
        return None, f"the configured proot {chosen} is not an executable file"
    if carried is None:
        from ucore.plugins import carried as carried_files

        carried = carried_files.load(__file__)
    own = carried.path(CARRIED_PROOT) if carried else None
    if carried and own and os.access(own, os.X_OK):
        return own, f"{carried.origin(CARRIED_PROOT)}; none configured"
    found = spawn.find_program("proot", env.get("PATH", os.defpath))
    if found:
        return os.path.abspath(found), "found on PATH; none configured or carried"
    return None, f"no proot on PATH and none carried: {HOW_TO_GET}"


def parse_version(text: str) -> tuple[str, bool]:
    """(version, seccomp accelerator built in) from ``proot -V`` output."""
    version = re.search(r"\b(v?\d+\.\d+(?:\.\d+)?(?:[-+.~][\w.~+-]*)?)\s*$", text, re.M)
    seccomp = re.search(r"seccomp_filter\s*=\s*(yes|no)", text)
    return (
        version.group(1).lstrip("v") if version else "unknown",
        bool(seccomp and seccomp.group(1) == "yes"),
    )


class Discovery:
    """Inspects proot binaries, caching what it learns in ``cache_file``."""

    def __init__(self, cache_file: Path, tmp: Path) -> None:
        self.cache = ProbeCache(cache_file)
        self.tmp = tmp

    def inspect(self, path: str) -> Proot:
        """What ``path`` supports; raises RuntimeError (one line) when it cannot run here."""
        key = _key(path)
        cached = self.cache.get(key)
        if isinstance(cached, dict) and isinstance(cached.get("proot"), dict):
            data = cached["proot"]
            with contextlib.suppress(KeyError, TypeError):
                untranslated = tuple(str(x) for x in data["untranslated"])
                return Proot(path, str(data["version"]), bool(data["seccomp"]), untranslated)
        version, seccomp = parse_version(_output([path, "-V"]))
        found = Proot(path, version, seccomp, self._untranslated(path))
        self._save(key, "proot", found._asdict())
        return found

    def kompat_works(self, proot: Proot) -> bool:
        """Whether ``-k`` leaves glibc 2.33+ programs working (see the module docstring)."""
        key = _key(proot.path)
        cached = self.cache.get(key) or {}
        if isinstance(cached, dict) and isinstance(cached.get("kompat"), bool):
            return bool(cached["kompat"])
        numbers = syscall_numbers()
        nr = numbers[1]["newfstatat"] if numbers else -1
        code = (
            "import ctypes,sys\n"
            "libc=ctypes.CDLL(None,use_errno=True)\n"
            "buf=ctypes.create_string_buffer(256)\n"
            f"sys.exit(0 if {nr}<0 or libc.syscall({nr},0,b'',buf,0x1000)==0 else 3)\n"
        )
        argv = [proot.path, "-k", os.uname().release, sys.executable, "-I", "-S", "-c", code]
        try:
            works = _run(argv).returncode == 0
        except RuntimeError:
            return False
        self._save(key, "kompat", works)
        return works

    def _save(self, key: str, field: str, value: Any) -> None:
        entry = self.cache.get(key)
        self.cache.put(key, {**(entry if isinstance(entry, dict) else {}), field: value})

    def _untranslated(self, path: str) -> tuple[str, ...]:
        numbers = syscall_numbers()
        if numbers is None:
            return ()
        nrs = numbers[1]
        self.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        import tempfile

        with tempfile.TemporaryDirectory(dir=self.tmp, prefix="proot-probe-") as scratch:
            Path(scratch, "f").write_text("probe\n")
            Path(scratch, "d").mkdir()
            argv = [path, "-b", f"{scratch}:{_PROBE_DIR}", "-w", "/", sys.executable, "-I", "-S"]
            result = _run([*argv, "-c", _probe_code(nrs)])
        if result.returncode != 0 or not result.stdout.strip():
            lines = [x for x in (result.stderr or "").splitlines() if x.strip()]
            detail = lines[-1] if lines else f"exit status {result.returncode}"
            raise RuntimeError(f"{path} cannot run programs here ({detail})")
        errnos = json.loads(result.stdout.strip().splitlines()[-1])
        return tuple(name for name in PROBED if errnos.get(name) == 2)  # ENOENT: not translated


def _probe_code(nrs: dict[str, int]) -> str:
    """Python run under proot: each call names a path that exists only through the bind, so
    ENOENT means proot passed the guest path to the kernel untranslated."""
    f, d = f"{_PROBE_DIR}/f".encode(), f"{_PROBE_DIR}/d".encode()
    calls = {
        "statx": f"({nrs['statx']},-100,{f!r},0,0x7ff,buf)",
        "faccessat2": f"({nrs['faccessat2']},-100,{f!r},4,0)",
        "openat2": f"({nrs['openat2']},-100,{f!r},how,24)",
        "fchmodat2": f"({nrs['fchmodat2']},-100,{f!r},0o644,0)",
        "execveat": f"({nrs['execveat']},-100,{d!r},argv,argv,0)",
    }
    lines = [
        "import ctypes,json",
        "libc=ctypes.CDLL(None,use_errno=True)",
        "buf=ctypes.create_string_buffer(512)",
        "how=ctypes.create_string_buffer(24)",
        "argv=(ctypes.c_char_p*2)(b'x',None)",
        "out={}",
    ]
    for name, args in calls.items():
        lines.append(f"r=libc.syscall{args}")
        lines.append(f"out[{name!r}]=0 if r>=0 else ctypes.get_errno()")
    lines.append("print(json.dumps(out))")
    return "\n".join(lines)


def _output(argv: list[str]) -> str:
    result = _run(argv)
    return (result.stdout or "") + (result.stderr or "")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return run_probe(argv, {"PATH": os.environ.get("PATH", os.defpath)})


def _key(path: str) -> str:
    st = os.stat(path)
    real = os.path.realpath(path)
    return f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{os.uname().release}"
