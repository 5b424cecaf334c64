"""The plugins the documentation writes (``docs/examples/``) work as its pages say: pip installs
them, ucore finds them through their entry points, and then

* the engine of "Writing an engine plugin" runs a container pulled from a registry, with the
  run's environment, working directory, user and volumes;
* the device provider of "Writing a device plugin" is listed, and refuses a node the host lacks;
* the registry client of "Writing a registry or mirror plugin" pulls Docker Hub names from a
  mirror.

The pages include the examples' files verbatim, so a change that breaks a page breaks this
test, not only a reader's afternoon.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import Ucore, describe, installed_engines, usable_engine

from ucore.testing.registry import RegistryServer

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
DISTRIBUTIONS = ("engine_tutorial", "device_provider", "registry_mirror")


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples, pip-installed into a directory of their own. pip builds a local project
    in place, so it builds copies: the checkout (read-only to the unprivileged user) stays
    clean."""
    work = tmp_path_factory.mktemp("examples")
    sources = [work / name for name in DISTRIBUTIONS]
    for source in sources:
        ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
        shutil.copytree(EXAMPLES / source.name, source, ignore=ignore)
    target = work / "site"
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    result = subprocess.run(
        [*argv, *map(str, sources)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, describe(result)
    return target


@pytest.fixture
def cli(ucore_cli: Ucore, examples_dir: Path) -> Ucore:
    """``ucore`` with the examples' directory first on its path, where the entry point scan
    finds each plugin's ``dist-info`` as it finds any installed plugin's."""
    ucore_cli.env["PYTHONPATH"] = os.pathsep.join([str(examples_dir), ucore_cli.env["PYTHONPATH"]])
    return ucore_cli


def test_the_tutorial_engine_is_discovered_through_its_entry_point(cli: Ucore) -> None:
    rows = {row["name"]: row for row in json.loads(cli.ok("plugins", "--json").stdout)}
    row = rows["tutorial"]
    assert (row["distribution"], row["version"], row["status"]) == (
        "ucore-tutorial",
        "0.1.0",
        "loaded",
    )
    assert row["hooks"] == ["ucore_register_engines"]
    engine = installed_engines(cli)["tutorial"]
    assert (engine["aliases"], engine["preference"]) == (["T1"], 90)


def test_the_tutorial_engine_runs_a_pulled_image(
    cli: Ucore, busybox_image: str, tmp_path: Path
) -> None:
    engine = usable_engine(installed_engines(cli), "tutorial")
    cli.ok("pull", busybox_image)
    cli.ok("create", "--name", "tut", busybox_image)
    cli.ok("setup", f"--engine={engine}", "tut")
    assert cli.ok("setup", "tut").stdout.strip() == engine
    volume = tmp_path / "results"
    volume.mkdir()
    script = 'echo "$GREETING from $(pwd) as $(id -u)"; echo saved > /results/out; exit 3'
    result = cli.run(
        "run", "-e", "GREETING=hello", "-w", "/tmp", "-v", f"{volume}:/results", "tut",
        "sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 3, describe(result)
    assert result.stdout == "hello from /tmp as 0\n", describe(result)
    assert (volume / "out").read_text() == "saved\n"
    [row] = json.loads(cli.ok("ps", "--json").stdout)
    assert row["engine"] == engine


def test_the_tutorial_engine_takes_its_alias_and_the_user(cli: Ucore, busybox_image: str) -> None:
    """``setup --execmode=T1`` finds the engine by its alias; ``-u`` reaches ``proot -i``."""
    usable_engine(installed_engines(cli), "tutorial")
    cli.ok("create", "--name", "tut", busybox_image)
    cli.ok("setup", "--execmode=T1", "tut")
    result = cli.ok("run", "-u", "1234:567", "tut", "sh", "-c", "echo $(id -u):$(id -g)")
    assert result.stdout == "1234:567\n", describe(result)


def test_the_device_provider_reports_and_refuses_what_the_host_lacks(
    cli: Ucore, busybox_image: str
) -> None:
    rows = {row["name"]: row for row in json.loads(cli.ok("plugins", "--json").stdout)}
    assert rows["dri"]["hooks"] == ["ucore_register_devices"]
    report = json.loads(cli.ok("info", "--devices", "--json").stdout)
    [provider] = [p for p in report["providers"] if p["kind"] == "dri"]
    assert provider["plugin"] == "ucore-dri"
    assert provider["summary"][0].startswith("render nodes: ")
    cli.ok("create", "--name", "dev", busybox_image)
    missing = cli.fails(9, "run", "--device", "render=renderD999", "dev", "true")
    assert "no /dev/dri/renderD999 on this host" in missing.stderr
    assert cli.ok("run", "--device", "dri=none", "dev", "echo", "ran").stdout == "ran\n"
    nodes = provider["nodes"]
    if nodes:  # a host with render nodes: the container sees them
        shown = cli.ok("run", "--device", "dri", "dev", "ls", "/dev/dri").stdout.split()
        assert set(nodes) <= set(shown)


def test_the_mirror_client_pulls_docker_hub_names_from_the_mirror(
    cli: Ucore, registry: RegistryServer
) -> None:
    """Docker Hub itself is out of reach (the test's proxy guard), so a pull of ``busybox``
    that succeeds came from the mirror, and it is kept under its Docker Hub name."""
    cli.fails(4, "pull", "busybox")  # no mirror configured: Docker Hub, unreachable
    mirrored = {"UCORE_HUB_MIRROR": registry.address}
    cli.ok("pull", "busybox", env=mirrored)
    names = [row["name"] for row in json.loads(cli.ok("images", "--json").stdout)]
    assert names == ["busybox:latest"]
    assert cli.ok("run", "busybox", "echo", "from the mirror").stdout == "from the mirror\n"
