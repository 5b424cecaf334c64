"""A minimal engine: runs a container's command under the host's ``proot``."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, ClassVar, Optional

from ucore.plugins import hookimpl
from ucore.running import spawn

if TYPE_CHECKING:
    from ucore.plugins import Registry
    from ucore.session import Session
    from ucore.values import Container, RunSpec


class TutorialEngine:
    """udocker's P1 in miniature: proot fakes the root directory and the user by tracing."""

    name: ClassVar[str] = "tutorial"
    aliases: ClassVar[tuple[str, ...]] = ("T1",)
    preference: ClassVar[int] = 90  # after the real engines, when ucore chooses
    hides_devices: ClassVar[bool] = False  # proot shows the host's /dev

    def __init__(self, session: Session) -> None:
        self.session = session
        self.proot = shutil.which("proot") or ""

    def probe(self) -> Optional[str]:
        return None if self.proot else "no proot on PATH"

    def run(self, container: Container, spec: RunSpec) -> int:
        argv = [self.proot, "-r", str(container.root), "-w", spec.cwd]
        if spec.uid is None:
            argv.append("-0")  # no user asked for: the image's root, faked
        else:
            argv += ["-i", f"{spec.uid}:{spec.gid or 0}"]
        for mount in spec.mounts:
            argv += ["-b", f"{mount.source}:{mount.target}"]
        for node in spec.devices:
            argv += ["-b", f"{node.path}:{node.target or node.path}"]
        return spawn.run([*argv, *spec.argv], dict(spec.env)).status


@hookimpl
def ucore_register_engines(register: Registry) -> None:
    register(TutorialEngine.name, TutorialEngine)
