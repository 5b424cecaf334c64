"""The ``ucore.testing`` pytest plugin as another project sees it: off unless asked for, then
fixtures that work, the glibc image made of this host's programs included.

Each project here is a directory of its own with a pytest run in a subprocess, so that what
pytest loads there is what ucore's installed entry point gives, not what this session loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ucore.api import Ucore as Api
from ucore.testing.cli import Ucore
from ucore.testing.events import EventRecorder

FIXTURES = ("ucore_registry", "ucore_busybox_image", "ucore_glibc_image", "ucore_events")


def pytest_in(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """pytest in ``project``, with nothing from this session's environment that adds plugins
    or options."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def project(tmp_path: Path, ini: str = "") -> Path:
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    return tmp_path


def test_an_unrelated_project_gets_nothing(tmp_path: Path) -> None:
    plain = project(tmp_path)
    listed = pytest_in(plain, "--fixtures")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert not [name for name in FIXTURES if name in listed.stdout]
    ran = pytest_in(plain, "-q", "--strict-config")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout
    assert "warning" not in ran.stdout.lower()


@pytest.mark.parametrize(
    ("ini", "args"),
    [("", ("-p", "ucore.testing")), ("ucore_testing = true", ())],
    ids=["-p ucore.testing", "ini ucore_testing"],
)
def test_a_project_opts_in(tmp_path: Path, ini: str, args: tuple[str, ...]) -> None:
    listed = pytest_in(project(tmp_path, ini), "--fixtures", *args)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [name for name in FIXTURES if name in listed.stdout] == list(FIXTURES)


def test_an_engine_conforms_on_the_glibc_image_made_of_host_programs(tmp_path: Path) -> None:
    """A third party's conformance class on the plugin's own registry and glibc image (this
    repository's suite runs its engines on the Debian image instead); a few checks are enough
    to show the image serves the suite."""
    third = project(tmp_path)
    (third / "test_mine.py").write_text(
        "from ucore.testing.conformance import EngineConformance\n\n\n"
        "class TestProotOnGlibc(EngineConformance):\n"
        '    engine = "proot"\n'
        '    image = "glibc"\n'
    )
    checks = "environment_is_the_images or user_by_name or invoking_user or stdin_passes"
    result = pytest_in(third, "-p", "ucore.testing", "-q", "-rs", "test_mine.py", "-k", checks)
    if "cannot run on this host" in result.stdout:
        pytest.skip(result.stdout.strip().splitlines()[-2])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout, result.stdout


def test_events_from_the_api_and_from_the_command(
    ucore_cli: Ucore, ucore_events: EventRecorder, busybox_image: str
) -> None:
    Api(store=ucore_cli.store, on_event=ucore_events).pull(busybox_image)
    finished = [e["stage"] for e in ucore_events.named("stage.finish")]
    assert "pull" in finished
    ucore_events.clear()
    again = ucore_cli.ok("pull", "--log-format", "json", busybox_image)
    assert ucore_events.read(again.stderr) == ucore_events.events
    assert "pull" in [e["stage"] for e in ucore_events.named("stage.finish")]
