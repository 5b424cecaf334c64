"""The runc and crun engines through ``ucore run``: what the conformance suite does not cover.

Many runs of one container at once, state left by a run that was killed, image configs that
would aim the runtime's mounts elsewhere, udocker's R modes, and the engine choice falling back
when neither runtime can run. What every engine must do is in ``test_conformance.py``.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import (
    Ucore,
    assert_error_line,
    describe,
    engine_container,
    installed_engines,
    on_terminal,
    usable_engine,
)

from ucore.testing.images import (
    BUSYBOX_CONFIG,
    LayerBuilder,
    build_image,
    busybox_layer_tar,
    make_layer,
)
from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer

ENGINES = ("runc", "crun")
HOSTILE = {
    # The image's /dev names the host's root once /proc is mounted.
    "hostile/devlink:latest": ([("symlink", "dev", "/proc/1/root")], {}),
    "hostile/proclink:latest": ([("symlink", "proc", "/var/tmp")], {}),
    "hostile/syslink:latest": ([("symlink", "sys", "/etc")], {}),
    # A directory descriptor of the runtime, as in CVE-2024-21626.
    "hostile/workdir:latest": ([], {"WorkingDir": "/proc/self/fd/7"}),
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Ucore:
    return Ucore(tmp_path_factory.mktemp("runc"))


@pytest.fixture(scope="module")
def image(cli: Ucore, registry: RegistryServer) -> str:
    ref = f"{registry.address}/busybox:latest"
    cli.ok("pull", ref)
    return ref


@pytest.fixture(scope="module")
def installed(cli: Ucore) -> dict[str, dict[str, Any]]:
    return installed_engines(cli)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest, installed: dict[str, dict[str, Any]]) -> str:
    return usable_engine(installed, request.param)


@pytest.fixture(scope="module")
def container(cli: Ucore, image: str, engine: str) -> str:
    return engine_container(cli, image, engine, "runc")


def state_dirs(cli: Ucore, engine: str) -> tuple[Path, Path]:
    """Where this store keeps the runtime's state and the bundles on this host (the tests
    clear ``XDG_RUNTIME_DIR``)."""
    host = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname())[:64]
    base = cli.store / "tmp" / f"run-{host or 'host'}"
    return base / engine, base / "bundles"


def test_two_runs_of_one_container_at_the_same_time(cli: Ucore, container: str) -> None:
    """Each waits until it sees the other's marker: both succeed only if they overlap."""
    script = (
        "touch /tmp/at-once-$1; i=0; while [ ! -e /tmp/at-once-$2 ] && [ $i -lt 200 ]; do"
        " sleep 0.05; i=$((i+1)); done; test -e /tmp/at-once-$2 && echo $1 saw $2"
    )
    sh = ("run", container, "sh", "-c", script, "sh")
    first, second = cli.popen(*sh, "a", "b"), cli.popen(*sh, "b", "a")
    out = [proc.communicate(timeout=60) for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], out
    assert [o[0] for o in out] == ["a saw b\n", "b saw a\n"]


def test_a_run_leaves_no_state(cli: Ucore, container: str, engine: str) -> None:
    """Neither when the command ends nor when a batch system's SIGTERM ends ucore; and no
    cgroup either (runc run by root makes one per run, which ucore removes itself)."""
    cli.ok("run", container, "true")
    assert cli.run("run", container, "sh", "-c", "exit 4").returncode == 4
    proc = cli.popen("run", container, "sh", "-c", "echo ready; exec sleep 60")
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    for directory in state_dirs(cli, engine):
        assert list(directory.iterdir()) == []
    assert glob.glob("/sys/fs/cgroup/*/ucore-*") == []


def test_state_of_a_killed_run_is_removed_by_the_next(
    cli: Ucore, container: str, engine: str
) -> None:
    """``kill -9`` of ucore leaves the runtime's state and the container; the next run removes
    both (the container's command is ended)."""
    root, bundles = state_dirs(cli, engine)
    proc = cli.popen("run", container, "sh", "-c", "echo ready; exec sleep 60")
    main = None
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        [bundle] = list(bundles.iterdir())
        main = _wait_for_pid(bundle / "pid")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)  # its output stays open: the orphaned command holds it
        assert (root / bundle.name).exists() and _alive(main)
        cli.ok("run", container, "true")
        assert not (root / bundle.name).exists() and not bundle.exists()
        deadline = time.monotonic() + 10
        while _alive(main) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(main), "the killed run's container still runs"
    finally:
        if main is not None and _alive(main):
            os.kill(main, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_a_full_disk_at_the_start_of_a_run_is_one_line(
    image: str, engine: str, tmp_path: Path
) -> None:
    """The run's bundle (``config.json``) cannot be written: exit 7, not a traceback."""
    if os.geteuid() != 0:
        pytest.skip("the runtime cannot run in the user namespace a small tmpfs needs")
    full = Ucore(tmp_path)
    full.ok("pull", image)
    name = engine_container(full, image, engine, "full")
    full.ok("run", name, "true")  # the probe is cached
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = full.on_full_disk(0, mount, "run", name, "true")
    assert result.returncode == 7, describe(result)
    assert "disk full" in assert_error_line(result)
    full.ok("run", name, "true")
    assert [list(d.iterdir()) for d in state_dirs(full, engine)] == [[], []]


def _wait_for_pid(path: Path) -> int:
    """The runtime writes the pid file a moment after the command starts."""
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(path.read_text())


def test_on_a_terminal_what_the_command_leaves_is_ended(cli: Ucore, container: str) -> None:
    """On a terminal, what the command leaves running is ended when it ends (the runtime
    would wait for it: it holds the terminal open), and what the command printed just before
    it exited reaches the terminal all the same. crun's own relay lost that output under load
    (it closes the terminal unread once its last child is reaped: 4 runs in 25 printed
    nothing); ucore now relays the terminal itself (``ucore_runc.console``)."""
    script = "sleep 30 & echo started; exit 3"
    pid, fd = on_terminal(cli.argv("run", container, "sh", "-c", script), cli.env)
    started = time.monotonic()
    output = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert b"started" in output
    assert os.waitstatus_to_exitcode(status) == 3, output
    assert time.monotonic() - started < 20, "the background process kept the run alive"


def _alive(pid: int) -> bool:
    """Alive and not a zombie (the orphaned command is reparented and reaped elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# --- hostile image configs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(cli: Ucore, registry: RegistryServer) -> dict[str, str]:
    pusher = Pusher(registry.url)
    refs = {}
    for tag, (entries, config) in HOSTILE.items():
        extra = LayerBuilder()
        for kind, path, target in entries:
            assert kind == "symlink"
            extra.whiteout(path).symlink(path, target)
        layers = [make_layer(busybox_layer_tar())]
        if entries:
            layers.append(make_layer(extra.tar()))
        pusher.push(tag, build_image(layers, config={**BUSYBOX_CONFIG, **config}))
        refs[tag] = f"{registry.address}/{tag}"
    return refs


@pytest.mark.parametrize("tag", sorted(HOSTILE))
def test_hostile_image_config_is_refused_before_the_runtime_sees_it(
    cli: Ucore, hostile: dict[str, str], engine: str, tag: str, tmp_path: Path
) -> None:
    name = f"{engine}-{tag.split('/')[1].split(':', maxsplit=1)[0]}"
    cli.ok("create", "--name", name, hostile[tag])
    cli.ok("setup", "--engine", engine, name)
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    result = cli.fails(6, "run", "-v", f"{sentinel}:/mnt", name, "sh", "-c", "touch /mnt/x")
    line = assert_error_line(result)
    if tag == "hostile/workdir:latest":
        assert "WorkingDir" in line and "refused" in line
    else:
        link = tag.split("/")[1][: -len("link:latest")]
        assert f"/{link} is a symbolic link" in line, line
    assert list(sentinel.iterdir()) == []
    assert list(state_dirs(cli, engine)[1].iterdir()) == []  # no runtime was started


# --- engine names and the choice --------------------------------------------------------------


def test_udocker_modes(cli: Ucore, image: str, installed: dict[str, dict[str, Any]]) -> None:
    cli.ok("create", "--name", "modes", image)
    if installed["runc"]["usable"]:
        cli.ok("setup", "--execmode=R1", "modes")
        assert cli.ok("setup", "modes").stdout.strip() == "runc"
    for mode in ("R2", "R3"):
        line = assert_error_line(cli.fails(8, "setup", f"--execmode={mode}", "modes"))
        assert "R2/R3" in line and "not supported" in line
    assert "R2" in installed["runc-proot"]["aliases"]
    assert not installed["runc-proot"]["usable"]


def test_choice_falls_back_when_no_oci_runtime_can_run(
    cli: Ucore, image: str, tmp_path: Path
) -> None:
    missing = {"UCORE_RUNC": str(tmp_path / "no-runc"), "UCORE_CRUN": str(tmp_path / "no-crun")}
    rows = json.loads(cli.ok("info", "--json", env=missing).stdout)["engines"]
    reasons = {row["name"]: row["reason"] for row in rows}
    assert "no-runc is not an executable file" in reasons["runc"]
    assert "no-crun is not an executable file" in reasons["crun"]
    cli.ok("create", "--name", "fallback", image)
    result = cli.run("run", "fallback", "echo", "fell back", env=missing)
    assert result.stdout == "fell back\n", describe(result)
    [row] = [r for r in json.loads(cli.ok("ps", "--json").stdout) if "fallback" in r["names"]]
    assert row["engine"] not in ("runc", "crun", "runc-proot")
