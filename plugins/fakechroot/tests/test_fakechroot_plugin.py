"""ucore-fakechroot installs, and ucore discovers and registers it through its entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata


def test_entry_point_resolves_to_the_plugin_module() -> None:
    eps = (
        metadata.entry_points(group="ucore")
        if sys.version_info >= (3, 10)
        else (metadata.entry_points().get("ucore", []))
    )
    [ep] = [ep for ep in eps if ep.name == "fakechroot"]
    assert ep.load().__name__ == "ucore_fakechroot.plugin"


def test_ucore_lists_the_plugin_with_its_version(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ucore", "plugins", "--json"],
        env={"UCORE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["fakechroot"]["status"] == "loaded"
    assert rows["fakechroot"]["distribution"] == "ucore-fakechroot"
    assert rows["fakechroot"]["version"] == metadata.version("ucore-fakechroot")
