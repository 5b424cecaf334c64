"""The ``bwrap`` engine: a container's command under bubblewrap, in a user namespace.

How a :class:`~ucore.values.model.RunSpec` becomes a ``bwrap`` command line:

* the root filesystem: ``--bind ROOT /``; bwrap mounts it in a mount namespace of its own, so
  nothing is mounted on the host;
* the user: ``--unshare-user --uid UID --gid GID``, the spec's ids (root when the spec names
  none), to which the invoking user is mapped: files the command writes belong to that user on
  the host, whoever it is inside;
* every mount, in the spec's order (parents first): ``--dev-bind`` (a plain ``--bind`` would
  add ``nodev``, and the host's ``/dev`` is one of them), ``--ro-bind`` for a read-only one;
  every device node: ``--dev-bind``. The core resolved every target inside the root already;
* the working directory: ``--chdir``; the environment: exactly the spec's, which bwrap passes
  on (and in which it looks up the command, with the container's ``PATH``);
* no PID, network or IPC namespace: the container shares the host's, as batch jobs and MPI
  ranks need, as every other engine does.

bwrap stays as the parent of the command and reports its exit status (``128 + N`` after signal
``N``) but passes no signal on: :func:`ucore.running.spawn.run` sends them to bwrap's child, the
command. What the command leaves running ends with it
(:func:`ucore.running.spawn.leftovers_ended`), and the mount points bwrap makes for a run's
transient mounts are removed after it (:func:`ucore.running.mountpoints.removed_after`).

Every ``ucore`` command that needs engines imports this module to register the class, so it
imports nothing costly at the top (``shutil`` alone would add 2 ms to every ``ucore run``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar, Optional

from ucore.running import mountpoints, spawn
from ucore.values import PluginError, UsageError

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values import Container, RunSpec

#: How long the probe's trial sandbox may take.
_TRIAL_SECONDS = 10


class BwrapEngine:
    name: ClassVar[str] = "bwrap"
    aliases: ClassVar[tuple[str, ...]] = ()
    #: After every engine of the six: an example is chosen by name (``setup --engine bwrap``).
    preference: ClassVar[int] = 90
    hides_devices: ClassVar[bool] = False  # the host's /dev is bound

    def __init__(self, session: Session) -> None:
        self.session = session
        self._bwrap: Optional[str] = None
        self._version = ""

    def probe(self) -> Optional[str]:
        """No bwrap, or one that cannot make a user namespace here (a sysctl, AppArmor): a
        trial sandbox says which, in bwrap's own words."""
        import subprocess  # for the probe only, which a session runs once

        path = spawn.find_program("bwrap", os.environ.get("PATH", os.defpath))
        if path is None:
            return "no bwrap on PATH (Debian: apt install bubblewrap)"
        trial = subprocess.run(
            [path, "--unshare-user", "--ro-bind", "/", "/", "--", "true"],
            capture_output=True,
            text=True,
            timeout=_TRIAL_SECONDS,
        )
        if trial.returncode != 0:
            lines = trial.stderr.strip().splitlines() or [f"exit status {trial.returncode}"]
            return f"{path} cannot make a sandbox here: {lines[-1]}"
        version = subprocess.run([path, "--version"], capture_output=True, text=True)
        self._bwrap, self._version = path, version.stdout.strip()
        return None

    def details(self) -> dict[str, str]:
        return {"bwrap": f"{self._version} ({self._bwrap})"} if self._bwrap else {}

    def run(self, container: Container, spec: RunSpec) -> int:
        why = self.probe() if self._bwrap is None else None
        if self._bwrap is None:
            raise PluginError(f"engine {self.name} cannot run: {why}")
        if spec.kernel:
            raise UsageError("--kernel: the bwrap engine cannot fake the kernel release")
        with mountpoints.removed_after(container, spec), spawn.leftovers_ended():
            result = spawn.run(
                self.command(self._bwrap, container, spec),
                dict(spec.env),
                cpuset=spec.cpuset,
                targets=spawn.children,
            )
        return result.status

    def command(self, bwrap: str, container: Container, spec: RunSpec) -> list[str]:
        uid = 0 if spec.uid is None else spec.uid
        gid = 0 if spec.gid is None else spec.gid
        argv = [bwrap, "--unshare-user", "--uid", str(uid), "--gid", str(gid)]
        argv += ["--die-with-parent", "--bind", str(container.root), "/"]
        for m in spec.mounts:
            argv += ["--ro-bind" if m.readonly else "--dev-bind", m.source, m.target]
        for d in spec.devices:
            argv += ["--dev-bind", d.path, d.target or d.path]
        return [*argv, "--chdir", spec.cwd, "--", *spec.argv]
