"""Where ucore-gpu looks: the host's tree (or a synthetic one), CDI directories, tools.

===================  ==============================  ========================================
setting (``[gpu]``)  environment                     meaning
===================  ==============================  ========================================
``device_root``      ``UCORE_DEVICE_ROOT``           the tree discovery reads as the host's
                                                     ``/`` (default ``/``; tests point it at
                                                     a synthetic host)
``cdi_dirs``         ``UCORE_CDI_DIRS``              CDI spec directories, ``:``-separated
                                                     (default ``/etc/cdi:/var/run/cdi``)
``container_cli``    ``UCORE_NVIDIA_CONTAINER_CLI``  the ``nvidia-container-cli`` to ask
                                                     (default: on ``PATH``; under a device
                                                     root, only one inside it)
``source``           ``UCORE_GPU_SOURCE``            ``auto`` (best first), ``cdi``,
                                                     ``container-cli`` or ``scan``
===================  ==============================  ========================================

Every path a source reports (``/dev/nvidia0``, a library, a CDI ``hostPath``) is a host path
and is read under the device root, so a synthetic tree describes a whole host.
"""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING, NamedTuple, Optional

from ucore.values.errors import UsageError

if TYPE_CHECKING:
    from ucore.session import Session

SOURCES = ("auto", "cdi", "container-cli", "scan")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


class Settings(NamedTuple):
    root: str = "/"
    cdi_dirs: tuple[str, ...] = CDI_DIRS
    container_cli: Optional[str] = None
    source: str = "auto"

    @property
    def synthetic(self) -> bool:
        """Whether discovery reads a tree other than the real host's."""
        return self.root != "/"

    def host(self, path: str) -> str:
        """The real path of a host path under the device root."""
        return path if self.root == "/" else self.root + path

    def back(self, real: str) -> str:
        """A real path under the device root as the host path it stands for."""
        if self.root == "/":
            return real
        return real[len(self.root) :] or "/"


def load(session: Session) -> Settings:
    section = session.config.section("gpu")
    env = os.environ

    def pick(key: str, var: str) -> Optional[str]:
        return env.get(var) or section.get(key) or None

    root = pick("device_root", "UCORE_DEVICE_ROOT") or "/"
    if not root.startswith("/") or "\0" in root:
        raise UsageError(f"device_root {root!r}: an absolute path is required")
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise UsageError(f"device_root {root}: not a directory")
    dirs = pick("cdi_dirs", "UCORE_CDI_DIRS")
    cdi = tuple(posixpath.normpath(d) for d in dirs.split(":") if d) if dirs else CDI_DIRS
    if any(not d.startswith("/") for d in cdi):
        raise UsageError(f"cdi_dirs {dirs!r}: absolute paths are required")
    source = pick("source", "UCORE_GPU_SOURCE") or "auto"
    if source not in SOURCES:
        raise UsageError(f"gpu source {source!r}: expected one of {', '.join(SOURCES)}")
    return Settings(root, cdi, pick("container_cli", "UCORE_NVIDIA_CONTAINER_CLI"), source)
