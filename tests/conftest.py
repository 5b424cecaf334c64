"""Fixtures for the cross-distribution integration tests: real registries with real images.

Built and pushed once per session: the test images go to an open registry; a Basic-auth
(htpasswd) registry and a Bearer-token registry serve the same storage; fault-injecting proxies
sit in front of the open and the token registries; a second "object storage" host on another
loopback address takes redirected blob downloads. Function-scoped wrappers reset the proxies'
faults and logs, so every test starts clean while paying for the servers only once.

Nothing here reaches the network beyond 127.0.0.0/8, and nothing needs root, but for one
thing built once per host and cached: the Debian root filesystem behind :func:`debian_image`,
which ``tests/setup-host.sh`` makes as root with debootstrap (see ``support/debian.py``).

The ``ucore.testing`` plugin (``ucore_testing = true`` in ``pyproject.toml``) adds ``ucore_cli``,
``ucore_events`` and the engine conformance suite's images; here its registry is the open one
and its glibc image the Debian one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import ucore  # noqa: F401
except ImportError:  # running from a checkout without ``pip install -e core``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core" / "src"))

from support import bullseye, debian
from support import slurm as slurm_support
from support.faultproxy import FaultProxy
from support.registries import AuthRegistry, second_loopback_host
from support.tokenserver import TokenServer

from ucore.testing.images import TestImages, all_test_images
from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer

USERNAME = "ucore-tester"
PASSWORD = "pa55-w0rd-not-in-logs"


@pytest.fixture(scope="session")
def harness_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("harness")


@pytest.fixture(scope="session")
def test_images() -> TestImages:
    """Every test image, built in memory (deterministic digests)."""
    return all_test_images()


@pytest.fixture(scope="session")
def registry(harness_dir: Path, test_images: TestImages) -> Iterator[RegistryServer]:
    """Open registry holding ``TestImages.tags()`` (busybox, multilayer, multiplatform, …)."""
    with RegistryServer(harness_dir / "open") as server:
        pusher = Pusher(server.url)
        for reference, content in test_images.tags().items():
            pusher.push(reference, content)
        yield server


@pytest.fixture(scope="session")
def busybox_image(registry: RegistryServer) -> str:
    """Reference of the static busybox image in the open registry (pushed with it)."""
    return f"{registry.address}/busybox:latest"


@pytest.fixture(scope="session")
def debian_image(registry: RegistryServer) -> str:
    """Reference of a Debian bookworm minbase image (glibc, ld.so, absolute symlinks) in the
    open registry, ``127.0.0.1:PORT/debian:bookworm``. Pushed on first use, so only sessions
    that need it pay for it (about a second, from the tar cached by ``support/debian.py``)."""
    try:
        tar = debian.debian_rootfs_tar()
    except debian.CacheMissing as missing:
        pytest.fail(str(missing))
    Pusher(registry.url).push("debian:bookworm", debian.debian_image(tar))
    return f"{registry.address}/debian:bookworm"


@pytest.fixture(scope="session")
def ucore_registry(registry: RegistryServer) -> RegistryServer:
    """The ``ucore.testing`` plugin's image fixtures push to the open registry."""
    return registry


@pytest.fixture(scope="session")
def ucore_glibc_image(debian_image: str) -> str:
    """The engine conformance suite's glibc image is the Debian one here (the plugin's default,
    made of this host's programs, is checked by ``test_testing_plugin.py``)."""
    return debian_image


@pytest.fixture(scope="session")
def bullseye_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Debian bullseye userland (glibc 2.31) extracted from the tar ``support/bullseye.py``
    caches, for :func:`support.bullseye.run_in_root`."""
    try:
        tar = bullseye.bullseye_rootfs_tar()
    except debian.CacheMissing as missing:
        pytest.fail(str(missing))
    return bullseye.extract(tar, tmp_path_factory.mktemp("bullseye") / "root")


@pytest.fixture(scope="session")
def basic_registry(harness_dir: Path, registry: RegistryServer) -> Iterator[AuthRegistry]:
    """htpasswd (Basic) registry sharing the open registry's storage."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        pytest.fail("htpasswd not found: install the Debian package apache2-utils")
    line = subprocess.run(
        [htpasswd, "-Bbn", USERNAME, PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = harness_dir / "htpasswd"
    path.write_text(line + "\n")
    auth = {"htpasswd": {"realm": "ucore-test-basic", "path": str(path)}}
    with RegistryServer(harness_dir / "basic", storage=registry.storage, auth=auth) as server:
        yield AuthRegistry(server, USERNAME, PASSWORD)


@pytest.fixture(scope="session")
def token_server(harness_dir: Path) -> Iterator[TokenServer]:
    """Token issuer for :func:`token_registry`: knows ``USERNAME``/``PASSWORD``, grants
    anonymous pulls unless a test turns ``allow_anonymous_pull`` off (see
    :func:`private_token_registry`)."""
    with TokenServer(harness_dir / "token", users={USERNAME: PASSWORD}) as server:
        yield server


@pytest.fixture(scope="session")
def _token_registry(
    harness_dir: Path, registry: RegistryServer, token_server: TokenServer
) -> Iterator[AuthRegistry]:
    auth = token_server.registry_auth()
    with RegistryServer(harness_dir / "tokenreg", storage=registry.storage, auth=auth) as server:
        yield AuthRegistry(server, USERNAME, PASSWORD, token_server)


@pytest.fixture
def token_registry(_token_registry: AuthRegistry) -> Iterator[AuthRegistry]:
    """Bearer-token registry sharing the open registry's storage; anonymous pull allowed;
    the token server's request log starts empty."""
    assert _token_registry.token_server is not None
    _token_registry.token_server.allow_anonymous_pull = True
    _token_registry.token_server.clear()
    yield _token_registry


@pytest.fixture
def private_token_registry(token_registry: AuthRegistry) -> Iterator[AuthRegistry]:
    """The token registry, but anonymous tokens carry no rights (as for a private repository)."""
    assert token_registry.token_server is not None
    token_registry.token_server.allow_anonymous_pull = False
    yield token_registry
    token_registry.token_server.allow_anonymous_pull = True


def _reset(proxy: FaultProxy) -> Iterator[FaultProxy]:
    proxy.reset_state()
    yield proxy
    proxy.reset_state()


@pytest.fixture(scope="session")
def _proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as proxy:
        yield proxy


@pytest.fixture
def proxy(_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """Fault proxy in front of the open registry: no faults, empty request log."""
    yield from _reset(_proxy)


@pytest.fixture(scope="session")
def _blob_host(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url, host=second_loopback_host()) as proxy:
        yield proxy


@pytest.fixture
def blob_host(_blob_host: FaultProxy) -> Iterator[FaultProxy]:
    """ "Object storage" on another loopback host (127.0.0.2): serves blobs from the open
    registry and records whether an ``Authorization`` header arrived. Redirect to it with
    ``proxy.redirect(blob_host.url)``."""
    yield from _reset(_blob_host)


@pytest.fixture(scope="session")
def _token_proxy(_token_registry: AuthRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(_token_registry.url) as proxy:
        yield proxy


@pytest.fixture
def token_proxy(_token_proxy: FaultProxy, token_registry: AuthRegistry) -> Iterator[FaultProxy]:
    """Fault proxy in front of the token registry (credentials: ``USERNAME``/``PASSWORD``)."""
    yield from _reset(_token_proxy)


@pytest.fixture(scope="session")
def _basic_proxy(basic_registry: AuthRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(basic_registry.url) as proxy:
        yield proxy


@pytest.fixture
def basic_proxy(_basic_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """Fault proxy in front of the Basic-auth registry (credentials: ``USERNAME``/``PASSWORD``)."""
    yield from _reset(_basic_proxy)


@pytest.fixture(scope="session")
def slurm() -> Iterator[slurm_support.Slurm]:
    """A real single-node Slurm for the tests marked ``hpc`` (``support/slurm.py`` documents
    its API): root starts the daemons, jobs run as ``ucore-test``; ``SLURM_CONF`` points at it
    while the session lasts."""
    try:
        cluster = slurm_support.start()
    except slurm_support.SlurmError as error:
        pytest.fail(str(error))
    try:
        yield cluster
    finally:
        slurm_support.stop(cluster)
