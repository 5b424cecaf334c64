"""The runc and crun engines (udocker's R1), and a placeholder that explains R2/R3.

Two engines rather than one that picks a binary, so that ``setup --engine`` records a complete
choice and ``ucore info`` shows both. crun is preferred (``preference`` 10 against runc's 11):
it starts a container in about half runc's time (see ``bench/run.py``) and needs no id but the
user's to run as another user. ``R1`` names runc, as in udocker (whose R1 tries runc first).

This module is imported whenever engines are registered, so it imports nothing heavy: the
config, the discovery and the launch live in their own modules, imported when an engine is
probed or run.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar, Optional

from ucore.values.errors import IntegrityError, PluginError

if TYPE_CHECKING:
    from ucore.running.spawn import Step
    from ucore.session import Session
    from ucore.values.model import Container, RunSpec
    from ucore_runc.discover import Discovery, Runtime
    from ucore_runc.spec import Identity


class OciEngine:
    """What runc and crun share; ``kind`` names the binary."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    preference: ClassVar[int]
    kind: ClassVar[str]
    #: The container gets a minimal ``/dev`` of its own: only the spec's device nodes.
    hides_devices: ClassVar[bool] = True
    #: The runtime needs ``/proc`` in the container even with ``--nosysdirs``.
    needs_proc: ClassVar[bool] = False
    #: The runtime refuses a user namespace whose root is not mapped (runc).
    needs_root_mapping: ClassVar[bool] = False

    def __init__(self, session: Session) -> None:
        self.session = session
        self._runtime: Optional[Runtime] = None
        self._why: Optional[str] = None
        self._probed = False

    # --- what ucore info and the engine choice ask ------------------------------------------

    def probe(self) -> Optional[str]:
        if not self._probed:
            self._probed = True
            self._why = self._find_why()
        return self._why

    def _find_why(self) -> Optional[str]:
        from ucore_runc import discover

        configured = self.session.config.section(self.kind).get("path")
        path, why = discover.locate(self.kind, configured=configured)
        if path is None:
            return why
        try:
            self._runtime = self._discovery().inspect(path, self.kind)
        except RuntimeError as exc:
            return str(exc)
        refusal = discover.cve_refusal(self._runtime)
        if refusal is not None:
            return refusal
        values = discover.sysctls()
        privileged = os.getuid() == 0
        refusal = discover.userns_refusal(values, privileged)
        if refusal is not None:
            return refusal
        key = "|".join(
            [
                "trial",
                discover.binary_key(path),
                os.uname().release,
                "root" if privileged else "user",
                discover.hybrid_controllers() or "-",
                *(str(values[k]) for k in sorted(values)),
            ]
        )
        failed = self._discovery().trial(key, self._trial)
        apparmor = values.get("kernel.apparmor_restrict_unprivileged_userns") == 1
        if failed is not None and apparmor and not privileged:
            return (
                "user namespaces are restricted by AppArmor"
                " (sysctl kernel.apparmor_restrict_unprivileged_userns=1) and no AppArmor"
                f" profile lets {path} create one ({failed})"
            )
        return failed

    def _discovery(self) -> Discovery:
        from ucore_runc.discover import Discovery

        return Discovery(self.session.store.root / "cache" / "runc.json")

    def _trial(self) -> Optional[str]:
        from ucore_runc import trial

        assert self._runtime is not None
        who, steps = self._identity(None, None)
        return trial.attempt(
            self._runtime,
            self.session.store.ensure().tmp,
            self._global_options(),
            steps,
            who,
            proc=self.needs_proc,
        )

    def details(self) -> dict[str, str]:
        self.probe()
        runtime = self._runtime
        if runtime is None:
            return {}
        from ucore_runc import discover

        out = {self.kind: f"{runtime.version} ({runtime.path})"}
        if runtime.kind == "runc":
            if runtime.backport:
                out[discover.CVE] = f"fixed by the distribution ({runtime.backport})"
            elif runtime.numbers >= discover.FIXED_RUNC:
                out[discover.CVE] = "fixed (runc 1.1.12 or later)"
        controllers = discover.hybrid_controllers() if self.kind == "crun" else None
        if controllers:
            out["cgroups"] = (
                f"hybrid, with v2 controllers ({controllers}), which crun refuses ('cgroups in"
                " hybrid mode not supported'): ucore starts it in a private mount namespace"
                " where /sys/fs/cgroup/unified is hidden (empty in the container's /sys too)"
            )
        out["exit status after a signal"] = "exact"
        if self.needs_proc:
            out["/proc with --nosysdirs"] = (
                "kept: runc needs /proc in the container (it closes inherited descriptors"
                " through /proc/self/fd)"
            )
        if self.needs_root_mapping and os.getuid() != 0:
            from ucore_runc.subids import subordinate

            out["-u USER other than root"] = (
                "the container's root is then the first id of your /etc/subuid range"
                if subordinate("uid", os.getuid()) is not None
                else "not possible here: runc maps the container's root too, which needs an"
                " /etc/subuid range and newuidmap (package uidmap); use crun"
            )
        return out

    # --- running ----------------------------------------------------------------------------

    def run(self, container: Container, spec: RunSpec) -> int:
        from pathlib import Path

        from ucore_runc import launch
        from ucore_runc import spec as oci

        if self.probe() is not None or self._runtime is None:
            raise PluginError(f"engine {self.name} cannot run: {self._why}")
        if spec.kernel:
            raise PluginError(
                f"--kernel: the {self.name} engine cannot fake the kernel release; the PRoot"
                " engines can ('ucore setup --engine=P1 CONTAINER')"
            )
        root = Path(container.root)
        sysdirs = oci.has_sysdirs(spec)
        why = oci.check_root(root, oci.needed_roots(sysdirs, self.needs_proc))
        if why is not None:
            raise IntegrityError(why)
        terminal = spec.terminal and os.isatty(1)
        if os.getuid() != 0:
            spec = single_copy_off(spec)
        who, steps = self._identity(spec.uid, spec.gid)
        config = oci.config(spec, root, who, proc=self.needs_proc, terminal=terminal)
        from ucore.running.mountpoints import removed_after
        from ucore_runc.discover import runtime_env

        with removed_after(container, spec):
            run = launch.open_run(self._runtime, self.session.store, self._global_options())
            try:
                run.write_config(config)
                go = launch.run_on_terminal if terminal else launch.run_detached
                return go(run, runtime_env(), steps, spec.cpuset)
            finally:
                run.cleanup()

    def _global_options(self) -> list[str]:
        return []

    def _identity(self, uid: Optional[int], gid: Optional[int]) -> tuple[Identity, list[Step]]:
        """The container's user and id mappings (see ``spec.identity``), and what the child must
        do before it becomes the runtime for them to work."""
        from ucore_runc import spec

        host_uid, host_gid = os.getuid(), os.getgid()
        steps = self._steps()
        if host_uid == 0:
            return spec.identity(uid, gid, 0, 0, privileged=True), steps
        if steps:  # crun in the namespace that hides cgroup v2, where the user is 0
            return spec.identity(uid, gid, 0, 0, privileged=False), steps
        if not (self.needs_root_mapping and (uid or gid)):
            return spec.identity(uid, gid, host_uid, host_gid, privileged=False), []
        from ucore_runc import subids

        subuid = subids.subordinate("uid", host_uid)
        subgid = subids.subordinate("gid", host_uid)
        if subuid is None or subgid is None:
            raise PluginError(
                f"{self.name} runs as user {uid or 0}:{gid or 0} only with a second id for the"
                " container's root, from /etc/subuid and /etc/subgid ranges of yours mapped by"
                " newuidmap/newgidmap (package uidmap), and there are none here: use the crun"
                " engine ('ucore setup --engine=crun CONTAINER'), or -u 0"
            )
        who = spec.identity(uid, gid, 0, 0, privileged=False, root_uid=1, root_gid=1)
        return who, [subids.outer_namespace(host_uid, host_gid, subuid, subgid)]

    def _steps(self) -> list[Step]:
        """What the child runs just before it becomes the runtime, whoever the user."""
        return []


#: Set in the container of an MPI rank when the user has not set it (see :func:`single_copy_off`).
SINGLE_COPY = "OMPI_MCA_btl_vader_single_copy_mechanism"
#: Variables that only a rank an MPI launcher started has.
_RANK = ("PMIX_RANK", "OMPI_COMM_WORLD_RANK")


def single_copy_off(spec: RunSpec) -> RunSpec:
    """An unprivileged runtime puts each container in a user namespace of its own, so the
    ranks of one job on a node are in different ones, and Open MPI's shared-memory transport
    cannot use its single-copy mechanism between them (CMA, ``process_vm_readv``, which the
    kernel refuses across user namespaces): with the host's Open MPI settings (Debian's turn
    UCX off) a two-rank job hung after "CMA not available due to different user namespaces".
    The copy-in/copy-out path works; it is what Apptainer's documentation advises for its
    user-namespace mode too. A value the user set wins."""
    env = dict(spec.env)
    if SINGLE_COPY in env or not any(name in env for name in _RANK):
        return spec
    return spec._replace(env=(*spec.env, (SINGLE_COPY, "none")))


class RuncEngine(OciEngine):
    """runc: udocker's R1."""

    name: ClassVar[str] = "runc"
    aliases: ClassVar[tuple[str, ...]] = ("R1",)
    preference: ClassVar[int] = 11
    kind: ClassVar[str] = "runc"
    needs_proc: ClassVar[bool] = True
    needs_root_mapping: ClassVar[bool] = True


class CrunEngine(OciEngine):
    """crun: the same containers, started faster."""

    name: ClassVar[str] = "crun"
    aliases: ClassVar[tuple[str, ...]] = ()
    preference: ClassVar[int] = 10
    kind: ClassVar[str] = "crun"

    def _global_options(self) -> list[str]:
        return ["--cgroup-manager=disabled"]

    def _steps(self) -> list[Step]:
        from ucore_runc.discover import hide_cgroup2, hybrid_controllers

        return [hide_cgroup2] if hybrid_controllers() is not None else []


class RuncProotEngine:
    """udocker's R2/R3 (PRoot inside runc), which ucore does not provide; registered so that
    ``--execmode=R2`` and ``ucore info`` say why instead of "not installed"."""

    name: ClassVar[str] = "runc-proot"
    aliases: ClassVar[tuple[str, ...]] = ("R2", "R3")
    preference: ClassVar[int] = 19
    WHY: ClassVar[str] = (
        "udocker's R2/R3 (PRoot inside runc) are not supported: runc and crun already run the"
        " command as the container's root or as the -u user; PRoot inside would only add"
        " chown to ids the user namespace does not map, and needs a statically linked proot"
        " bound into the container; use R1 (runc), crun, or P1 (PRoot alone)"
    )

    def __init__(self, session: Session) -> None:
        self.session = session

    def probe(self) -> Optional[str]:
        return self.WHY

    def run(self, container: Container, spec: RunSpec) -> int:
        raise PluginError(self.WHY)
