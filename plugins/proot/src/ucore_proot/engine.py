"""The PRoot engines: udocker's P1 (seccomp-accelerated) and P2 (``PROOT_NO_SECCOMP=1``).

Two engines rather than one with a mode, so that ``setup --engine`` records a complete choice,
``ucore info`` can show both, and a container can be pinned to P2 where P1 misbehaves.

How a :class:`~ucore.values.model.RunSpec` becomes a proot command line:

* the user: the spec's uid/gid faked with ``-i UID:GID``; none given (the image names no
  ``User``) is root, emulated with ``-0`` as udocker and Docker do; the invoking user's own
  ids need no faking at all (``-u $(id -u)``);
* every mount and device: ``-b HOST:GUEST`` (targets were resolved inside the root by the core);
  read-only ones through kernel-enforced read-only views (:mod:`ucore.running.readonly`), as PRoot
  has no read-only binds;
* ``--kernel``: ``-k``, only where the probe found it harmless (see :mod:`ucore_proot.discover`);
* system calls this proot would pass through untranslated are made to fail with ``ENOSYS``
  by a seccomp filter, so the C library falls back to calls PRoot translates.

PRoot ignores ``SIGTERM`` and ``SIGINT`` itself, so signals go to the container's main process
(proot's child) or, once that is gone, to every process proot still traces.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Optional

from ucore.running import spawn
from ucore.values.errors import PluginError
from ucore_proot.discover import Discovery, Proot, locate, syscall_numbers
from ucore_proot.watch import MainWatch, exact_signal_status

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, Mount, RunSpec

#: PRoot exits 255 when the last process it traced was killed by a signal.
_KILLED = 255
#: Host variables PRoot itself reads, passed to it when set (as udocker does).
_PROOT_ENV = ("PROOT_TMP_DIR",)


class ProotEngine:
    name: ClassVar[str] = "proot"
    aliases: ClassVar[tuple[str, ...]] = ("P1",)
    preference: ClassVar[int] = 50
    #: Whether PRoot may use its seccomp accelerator (P1) or must trace every call (P2).
    accelerate: ClassVar[bool] = True

    def __init__(self, session: Session) -> None:
        self.session = session
        store = session.store
        self.discovery = Discovery(store.root / "cache" / "proot.json", store.tmp)
        self._proot: Optional[Proot] = None
        self._why: Optional[str] = None
        #: Why this proot was chosen (configured, carried or on PATH), for ucore info.
        self._chosen = ""

    # --- what ucore info and the engine choice ask ------------------------------------------

    def probe(self) -> Optional[str]:
        self._inspect()
        return self._why

    def details(self) -> dict[str, str]:
        proot = self._inspect()
        if proot is None:
            return {}
        out = {"proot": f"{proot.version} ({proot.path}): {self._chosen}"}
        if not proot.seccomp:
            out["seccomp acceleration"] = (
                "not built into this proot: every system call is traced (P1 costs as P2)"
            )
        elif not self.accelerate:
            out["seccomp acceleration"] = "off (P2)"
        else:
            out["seccomp acceleration"] = "yes"
        out["exit status after a signal"] = (
            "exact"
            if exact_signal_status()
            else "not exact on this kernel (Linux < 6.15): a main process killed by a signal"
            " ucore did not forward reports PRoot's status"
        )
        if proot.untranslated:
            out["worked around"] = (
                "this proot does not translate "
                + ", ".join(proot.untranslated)
                + "; they fail with ENOSYS so programs use older calls"
            )
        return out

    def _inspect(self) -> Optional[Proot]:
        if self._proot is None and self._why is None:
            path, why = locate(configured=self.session.config.section("proot").get("path"))
            if path is None:
                self._why = why
                return None
            self._chosen = why
            try:
                self._proot = self.discovery.inspect(path)
            except RuntimeError as exc:
                self._why = str(exc)
        return self._proot

    # --- running ----------------------------------------------------------------------------

    def run(self, container: Container, spec: RunSpec) -> int:
        from ucore.running import readonly

        proot = self._inspect()
        if proot is None:
            raise PluginError(f"engine {self.name} cannot run: {self._why}")
        if spec.kernel and not self.discovery.kompat_works(proot):
            raise PluginError(
                f"--kernel: {proot.path} (proot {proot.version}) breaks glibc 2.33+ programs"
                " when it fakes the kernel release (its -k rejects fstat by descriptor,"
                " 'cannot stat shared object: Invalid argument'); run without --kernel, or set"
                " UCORE_PROOT to a proot whose -k works"
            )
        seccomp = _seccomp_step(proot)
        main = MainWatch()
        with readonly.views(spec.mounts, self.session.store.ensure().tmp) as views:
            result = spawn.run(
                self.command(proot, container, spec, views.mounts),
                self.environment(spec),
                steps=[views.enter, *([seccomp] if seccomp else [])],
                cpuset=spec.cpuset,
                targets=_targets,
                started=main.start,
            )
        main.join()
        if main.status is not None:
            return main.status
        if result.status == _KILLED and result.forwarded is not None:
            return 128 + result.forwarded
        return result.status

    def command(
        self, proot: Proot, container: Container, spec: RunSpec, mounts: Sequence[Mount]
    ) -> list[str]:
        argv = [proot.path, "-r", str(container.root), "-w", spec.cwd]
        argv += ["-v", "1" if self._verbosity() >= 2 else "-1"]
        argv += _identity(spec.uid, spec.gid)
        if spec.kernel:
            argv += ["-k", spec.kernel]
        for m in mounts:
            argv += ["-b", f"{m.source}:{m.target}"]
        for d in spec.devices:
            argv += ["-b", f"{d.path}:{d.target or d.path}"]
        return [*argv, *spec.argv]

    def environment(self, spec: RunSpec) -> dict[str, str]:
        env = dict(spec.env)
        env.update({k: os.environ[k] for k in _PROOT_ENV if k in os.environ})
        if not self.accelerate:
            env["PROOT_NO_SECCOMP"] = "1"
        return env

    def _verbosity(self) -> int:
        return int(getattr(self.session.config.options, "verbose", 0) or 0)


class ProotNoSeccompEngine(ProotEngine):
    """P2: every system call traced; slower, for kernels where the accelerator misbehaves."""

    name: ClassVar[str] = "proot-noseccomp"
    aliases: ClassVar[tuple[str, ...]] = ("P2",)
    preference: ClassVar[int] = 60
    accelerate: ClassVar[bool] = False


def _identity(uid: Optional[int], gid: Optional[int]) -> list[str]:
    if uid is None or (uid == 0 and not gid):
        return ["-0"]
    if uid == os.getuid() and gid in (None, os.getgid()):
        return []
    return ["-i", f"{uid}:{gid if gid is not None else uid}"]


def _seccomp_step(proot: Proot) -> Optional[spawn.Step]:
    from ucore_proot import seccomp
    from ucore_proot.discover import ALWAYS_MASKED

    numbers = syscall_numbers()
    if numbers is None:
        return None
    arch, nrs = numbers
    program = seccomp.program(arch, (nrs[n] for n in (*ALWAYS_MASKED, *proot.untranslated)))
    return seccomp.installer(program)


def _targets(pid: int) -> list[int]:
    """The container's main process (proot's child), or every process proot still traces."""
    return spawn.children(pid) or spawn.traced_by(pid)
