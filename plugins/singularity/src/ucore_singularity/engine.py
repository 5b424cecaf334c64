"""The ``singularity`` engine (udocker's S1): a container's root run by Apptainer/Singularity.

How a :class:`~ucore.values.model.RunSpec` becomes an ``apptainer exec`` command line:

* the root directory is run as a sandbox (``exec ROOT``), ``--writable`` where this user may
  write it (a store shared read-only runs it read-only); or, with ``image = sif`` in the
  ``[singularity]`` section (``UCORE_SINGULARITY_IMAGE=sif``), as a SIF file built from the
  root once, offline (``apptainer build``), for sites that forbid sandboxes;
* nothing of the runtime's own defaults that the other engines do not do: ``--no-mount`` for
  its /proc, /sys, /dev, home, /tmp, working directory and site binds (the core's mounts bring
  what the run asks for), ``--cleanenv`` so that no host variable leaks in;
* the environment: exactly the spec's (the core added the host's with ``--hostenv``), through
  the runtime's own mechanism: ``APPTAINERENV_NAME`` (``SINGULARITYENV_`` for Singularity) in
  the runtime's environment; ``HOME`` through ``--home`` (the runtime refuses it as a variable);
* every mount and device node: ``--bind SRC:DST[:ro]``, targets already resolved in the root;
* the user: root (the default root emulation, ``-u 0``) is ``--fakeroot``; the invoking user's
  own id needs nothing; any other id only when ucore runs as root (``--security uid:N,gid:M``),
  a clear error otherwise (the runtime maps no other id);
* ``--nv``/``--rocm`` when ``gpu = nv`` or ``rocm`` (``UCORE_SINGULARITY_GPU``): the runtime's
  own GPU setup, besides what the device plugins bound.

Apptainer's ``starter`` forwards SIGTERM, SIGINT and the like to the container's process and
exits with its status (``128 + N`` after signal ``N``), so :func:`ucore.running.spawn.run` signals
the runtime's process itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

from ucore.running import mountpoints, spawn
from ucore.values.errors import PluginError, UsageError
from ucore_singularity.discover import Discovery, Runtime, locate

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, RunSpec

#: The runtime's defaults that the core's mounts replace. Its /dev stays when the core binds
#: the host's: the runtime does not bind /dev as a user bind (the directory comes out empty).
NO_MOUNT = "proc,sys,home,tmp,cwd,hostfs,bind-paths"
#: Files the runtime writes into the container on its own (``config passwd``, ``config group``,
#: ``config resolv_conf`` in its configuration): where the core binds none, the image's own is
#: bound over them, so that the container sees what it would under every other engine.
INJECTED = ("/etc/passwd", "/etc/group", "/etc/resolv.conf")
#: Host variables the runtime itself reads (where to put its session, cache and config).
RUNTIME_ENV = ("TMPDIR", "CACHEDIR", "CONFIGDIR", "SESSIONDIR")
GPU_OPTIONS = {"nv": "--nv", "rocm": "--rocm", "binds": ""}
#: The ``[singularity]`` settings read at run time and the variables that override them.
VARIABLES = {"image": "UCORE_SINGULARITY_IMAGE", "gpu": "UCORE_SINGULARITY_GPU"}


class SingularityEngine:
    name: ClassVar[str] = "singularity"
    aliases: ClassVar[tuple[str, ...]] = ("S1", "apptainer")
    #: After crun and runc, before Fakechroot and PRoot (README "Engines"): where the site's
    #: runtime is all that works, the automatic choice lands here.
    preference: ClassVar[int] = 20
    hides_devices: ClassVar[bool] = False  # the core's /dev bind is the host's

    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = dict(session.config.section("singularity"))
        self.discovery = Discovery(session.store.root / "cache" / "singularity.json")
        self._runtime: Optional[Runtime] = None
        self._why: Optional[str] = None
        self._chosen = ""

    def _setting(self, name: str) -> str:
        return os.environ.get(VARIABLES[name]) or self.settings.get(name, "")

    # --- what ucore info and the engine choice ask ------------------------------------------

    def probe(self) -> Optional[str]:
        self._inspect()
        return self._why

    def _inspect(self) -> Optional[Runtime]:
        if self._runtime is None and self._why is None:
            path, why = locate(dict(os.environ), self.settings.get("path"))
            if path is None:
                self._why = why
                return None
            self._chosen = why
            try:
                self._runtime, self._why = self.discovery.inspect(path)
            except (OSError, RuntimeError) as exc:
                self._why = str(exc)
            gpu = self._setting("gpu")
            if self._why is None and gpu not in ("", *GPU_OPTIONS):
                self._why = f"gpu = {gpu}: the [singularity] setting takes nv, rocm or binds"
        return self._runtime

    def details(self) -> dict[str, str]:
        rt = self._inspect()
        if rt is None:
            return {}
        out = {
            rt.flavour: f"{rt.version} ({rt.path}): {self._chosen}",
            "setuid": "yes" if rt.setuid else "no: user namespaces",
            "root inside (-u 0)": "--fakeroot" if os.geteuid() else "real root",
            "other users inside": "only when ucore runs as root (--security uid:N)"
            if os.geteuid()
            else "yes",
            "image": "SIF built from the root" if self._sif() else "sandbox (the root directory)",
        }
        if rt.config:
            out["configuration"] = rt.config
        return out

    def _sif(self) -> bool:
        return self._setting("image").lower() == "sif"

    # --- running ----------------------------------------------------------------------------

    def run(self, container: Container, spec: RunSpec) -> int:
        rt = self._inspect()
        if rt is None:
            raise PluginError(f"engine {self.name} cannot run: {self._why}")
        if spec.kernel:
            raise UsageError(f"--kernel: {rt.flavour} cannot fake the kernel release")
        image = str(self.sif(rt, container)) if self._sif() else str(container.root)
        argv = self.command(rt, container, spec, image)
        env = self.environment(rt, spec)
        with mountpoints.removed_after(container, spec), spawn.leftovers_ended():
            if "--writable" in argv:  # the runtime makes no mount point in a sandbox
                mountpoints.make_lasting(container.root, spec.mounts)
            result = spawn.run(argv, env, cpuset=spec.cpuset)
        return result.status

    def command(self, rt: Runtime, container: Container, spec: RunSpec, image: str) -> list[str]:
        """The runtime's command line for ``spec`` (the environment is separate)."""
        targets = {m.target for m in spec.mounts}
        own_dev = any(m.target == "/dev" and m.source == "/dev" for m in spec.mounts)
        no_mount = NO_MOUNT if own_dev else f"{NO_MOUNT},dev,devpts"
        argv = [rt.path, "--silent", "exec", "--cleanenv", "--no-mount", no_mount]
        argv += self._identity(rt, spec)
        if image == str(container.root) and os.access(image, os.W_OK):
            argv.append("--writable")
        gpu = GPU_OPTIONS.get(self._setting("gpu"), "")
        if gpu:
            argv.append(gpu)
        for m in spec.mounts:
            if not (own_dev and m.target == "/dev"):
                argv += ["--bind", _bind(m.source, m.target, m.readonly)]
        for path in INJECTED:
            own = os.path.join(image, path.lstrip("/"))
            if path not in targets and os.path.lexists(own) and not os.path.islink(own):
                argv += ["--bind", _bind(own, path, False)]
        for d in spec.devices:
            argv += ["--bind", _bind(d.path, d.target or d.path, False)]
        home = dict(spec.env).get("HOME")
        if home:
            argv += ["--home", home]
        return [*argv, "--pwd", spec.cwd, image, *spec.argv]

    def _identity(self, rt: Runtime, spec: RunSpec) -> list[str]:
        uid = 0 if spec.uid is None else spec.uid
        gid = 0 if spec.gid is None else spec.gid
        if os.geteuid() == 0:
            caps = missing_capabilities()
            drop = ["--drop-caps", ",".join(caps)] if caps else []
            return [*drop, *([] if uid == gid == 0 else ["--security", f"uid:{uid},gid:{gid}"])]
        if uid == os.getuid():
            return ["--userns"]
        if uid == 0:
            if not rt.fakeroot:
                raise UsageError(
                    f"root inside needs {rt.flavour}'s --fakeroot, which this host does not"
                    " allow (no setuid install, no user namespaces): run with -u $(id -u)"
                )
            return ["--fakeroot"]
        raise UsageError(
            f"-u {uid}: {rt.flavour} runs a container as the invoking user or as root"
            " (--fakeroot); another user only when ucore runs as root"
        )

    def environment(self, rt: Runtime, spec: RunSpec) -> dict[str, str]:
        """The runtime's own environment: the spec's variables under the runtime's prefix,
        and the few host variables that tell the runtime where to work."""
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        for prefix in ("APPTAINER_", "SINGULARITY_"):
            for name in RUNTIME_ENV:
                value = os.environ.get(prefix + name)
                if value:
                    env[prefix + name] = value
        for name, value in spec.env:
            if name != "HOME":
                env[rt.env_prefix + name] = value
        return env

    def sif(self, rt: Runtime, container: Container) -> Path:
        """The container's SIF, built from its root without network the first time (and
        again after the root changed): ``apptainer build IMAGE.sif ROOT``."""
        import subprocess

        target = container.dir / "image.sif"
        root = container.root
        if target.exists() and target.stat().st_mtime >= root.stat().st_mtime:
            return target
        built = subprocess.run(
            [rt.path, "--silent", "build", "--force", str(target), str(root)],
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", os.defpath)},
        )
        if built.returncode != 0:
            lines = built.stderr.strip().splitlines() or [f"exit status {built.returncode}"]
            raise PluginError(f"{rt.flavour} build of {target} failed: {lines[-1]}")
        return target


#: Linux capabilities by number, as the runtime's ``--drop-caps`` names them.
CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]


def missing_capabilities() -> list[str]:
    """The capabilities root lacks here (outside this process's bounding set: a container or
    a batch system dropped them). Run as root the runtime asks for its full default set and
    fails ("Requesting capability set ... while permitted capability set is ..."), so those
    are dropped from what it asks for."""
    try:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("CapBnd:"))
    except (OSError, StopIteration):
        return []
    bounding = int(line.split()[1], 16)
    return [f"CAP_{n}" for i, n in enumerate(CAPABILITIES) if not bounding >> i & 1]


def _bind(source: str, target: str, readonly: bool) -> str:
    """``SRC:DST[:ro]``; the runtime splits binds at ``,`` and ``:``, so such paths are
    refused rather than misread."""
    for path in (source, target):
        if "," in path or ":" in path:
            raise UsageError(f"{path}: the singularity engine cannot bind a path with ':' or ','")
    return f"{source}:{target}:ro" if readonly else f"{source}:{target}"
