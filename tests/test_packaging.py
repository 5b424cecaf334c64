"""One version for the six distributions, and plugins pinned to the core's release series.

The wheels themselves are built and installed by ``test_wheels.py`` (hpc); these checks are
quick and run everywhere.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_dists  # noqa: E402 - a script folder, not a package


def test_every_package_reports_the_one_version() -> None:
    version = (ROOT / "VERSION").read_text().strip()
    for module in ("ucore", "ucore_proot", "ucore_fakechroot", "ucore_runc"):
        assert importlib.import_module(module).__version__ == version
    for module in ("ucore_singularity", "ucore_gpu"):
        assert importlib.import_module(module).__version__ == version
    assert build_dists.check_pins() == version


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The version file and the six pyproject.toml files, copied, with the tool pointed there."""
    shutil.copy(ROOT / "VERSION", tmp_path / "VERSION")
    for rel in build_dists.DISTRIBUTIONS.values():
        (tmp_path / rel).mkdir(parents=True)
        shutil.copy(ROOT / rel / "pyproject.toml", tmp_path / rel / "pyproject.toml")
    monkeypatch.setattr(build_dists, "ROOT", tmp_path)
    return tmp_path


def test_a_version_outside_a_plugins_pin_stops_the_build(checkout: Path) -> None:
    (checkout / "VERSION").write_text("0.2.0\n")
    with pytest.raises(build_dists.BuildError, match=r"ucore-proot pins .*excludes ucore 0\.2\.0"):
        build_dists.check_pins()


def test_set_version_moves_the_version_and_every_pin_together(checkout: Path) -> None:
    build_dists.set_version("1.4.2")
    assert (checkout / "VERSION").read_text() == "1.4.2\n"
    for name, rel in build_dists.DISTRIBUTIONS.items():
        text = (checkout / rel / "pyproject.toml").read_text()
        assert ('"ucore>=1.4,<1.5"' in text) == (name != "ucore")
    assert build_dists.check_pins() == "1.4.2"
    with pytest.raises(build_dists.BuildError, match=r"expected X\.Y\.Z"):
        build_dists.set_version("next")
