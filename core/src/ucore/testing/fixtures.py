"""The fixtures of the ``ucore.testing`` pytest plugin (see :mod:`ucore.testing` to opt in).

Servers and images are session-scoped: a registry starts once and each image is built and
pushed once, on first use, so a session that needs no glibc image never builds one. Every
fixture can be overridden by a project's own ``conftest.py`` under the same name (this
repository's suite serves its debootstrap Debian image as ``ucore_glibc_image``).

Nothing here reaches beyond 127.0.0.1 and nothing needs root. The host needs Debian's
``docker-registry`` (the registry) and ``busybox-static`` (the busybox image).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ucore.testing.cli import Ucore
from ucore.testing.events import EventRecorder
from ucore.testing.hostimage import glibc_image
from ucore.testing.images import busybox_image
from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer

#: Where Debian's busybox-static installs the static busybox the busybox image is made of.
BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="session")
def ucore_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry on 127.0.0.1 (Debian's ``docker-registry``), empty but for what the image
    fixtures push; ``.address`` is the registry part of an image reference."""
    with RegistryServer(tmp_path_factory.mktemp("ucore-registry")) as server:
        yield server


@pytest.fixture(scope="session")
def ucore_busybox_image(ucore_registry: RegistryServer) -> str:
    """Reference of a static busybox image in :func:`ucore_registry`: no libc in it, so it runs
    in every engine that can start a static program (``Cmd ["sh"]``, ``UCORE_TEST_IMAGE=busybox``,
    accounts ``root`` and ``nobody``)."""
    if not BUSYBOX.is_file():
        pytest.fail(f"the busybox image needs a static {BUSYBOX} (Debian: busybox-static)")
    Pusher(ucore_registry.url).push("busybox:latest", busybox_image(busybox=BUSYBOX))
    return f"{ucore_registry.address}/busybox:latest"


@pytest.fixture(scope="session")
def ucore_glibc_image(ucore_registry: RegistryServer) -> str:
    """Reference of a glibc image in :func:`ucore_registry`, for engines that run programs
    through the image's loader: this host's shell, coreutils and libraries
    (:mod:`ucore.testing.hostimage`; ``UCORE_TEST_IMAGE=glibc``)."""
    Pusher(ucore_registry.url).push("glibc:latest", glibc_image())
    return f"{ucore_registry.address}/glibc:latest"


@pytest.fixture
def ucore_cli(tmp_path: Path) -> Ucore:
    """The ``ucore`` command with a private, not yet existing ``UCORE_DIR`` and ``HOME``."""
    return Ucore(tmp_path)


@pytest.fixture
def ucore_events() -> EventRecorder:
    """An empty :class:`~ucore.testing.events.EventRecorder`: pass it as ``on_event`` to
    :class:`ucore.api.Ucore`, or give it a command's ``--log-format json`` output to ``read``."""
    return EventRecorder()
