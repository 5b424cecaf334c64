"""The hook contract and plugin loading: documented specs, broken and blocked plugins,
registration clashes, and a third-party plugin discovered through a real entry point."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ucore.plugins import hookspecs
from ucore.plugins.loading import get_plugin_manager
from ucore.plugins.registration import Registry
from ucore.values.errors import PluginError

SPECS = [
    obj for name, obj in vars(hookspecs).items() if name.startswith("ucore_") and callable(obj)
]


def test_every_hook_is_documented_with_each_parameter() -> None:
    assert {f.__name__ for f in SPECS} >= {
        "ucore_fetch",
        "ucore_unpack",
        "ucore_prepare",
        "ucore_execute",
        "ucore_event",
        "ucore_register_engines",
        "ucore_register_registries",
        "ucore_register_devices",
        "ucore_addoption",
        "ucore_configure",
    }
    for spec in SPECS:
        doc = inspect.getdoc(spec) or ""
        assert len(doc.splitlines()[0]) > 10, f"{spec.__name__} has no summary"
        for param in inspect.signature(spec).parameters:
            assert f":param {param}:" in doc, f"{spec.__name__} does not document {param}"
        opts = spec.ucore_spec  # type: ignore[attr-defined]
        if opts.get("firstresult"):
            assert "Stops at first non-None result" in doc, spec.__name__
            assert ":returns:" in doc, spec.__name__
        assert not (opts.get("firstresult") and opts.get("historic")), spec.__name__


def test_registry_names_both_plugins_on_a_clash() -> None:
    class A:
        @hookspecs.hookimpl
        def ucore_register_engines(self, register: Registry) -> None:
            register("fast", object)

    class B(A):
        pass

    plugins = get_plugin_manager(entry_points=False)
    plugins.pm.register(A(), name="first")
    plugins.pm.register(B(), name="second")
    with pytest.raises(PluginError, match="engine 'fast' registered twice") as info:
        Registry.collect(plugins.pm, "ucore_register_engines", "engine")
    assert "plugin 'first'" in str(info.value) and "plugin 'second'" in str(info.value)


def test_a_plugin_with_a_misspelt_hook_is_reported_and_skipped() -> None:
    """As a plugin that fails to import: the others keep working."""

    class Typo:
        @hookspecs.hookimpl
        def ucore_fecth(self) -> None:
            pass

        @hookspecs.hookimpl
        def ucore_register_engines(self, register: Any) -> None:
            raise AssertionError("a skipped plugin is never called")

    plugins = get_plugin_manager(entry_points=False)
    plugins.register(Typo(), "typo", "thirdparty-typo", "1.0")
    plugins.drop_unknown_hooks()
    plugins.pm.check_pending()  # nothing left that pluggy would refuse
    assert not plugins.pm.has_plugin("typo")
    rows = {row["name"]: row for row in plugins.describe()}
    assert rows["typo"]["status"] == "failed: implements no such hook ucore_fecth (misspelt?)"
    assert rows["execute"]["status"] == "loaded"
    Registry.collect(plugins.pm, "ucore_register_engines", "engine")


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A directory with two real installed distributions (dist-info + entry points): a working
    third-party engine plugin and one whose import fails."""
    (tmp_path / "thirdparty_engine.py").write_text(
        textwrap.dedent('''
        """A complete third-party engine plugin, as short as the brief promises."""
        from ucore.plugins.hookspecs import hookimpl

        class EchoEngine:
            name = "echo"

            def probe(self):
                return None

            def run(self, container, spec, session):
                return 0

        @hookimpl
        def ucore_register_engines(register):
            register("echo", EchoEngine)
    ''')
    )
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('libfoo.so missing')\n")
    for dist, module in (
        ("thirdparty-engine", "thirdparty_engine"),
        ("broken-plugin", "broken_plugin"),
    ):
        info = tmp_path / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[ucore]\n{dist.split('-')[0]} = {module}\n")
    return tmp_path


def run_ucore(
    args: list[str], tmp_path: Path, pythonpath: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        "UCORE_DIR": str(tmp_path / "store"),
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(pythonpath),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "ucore", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_third_party_plugin_loads_and_broken_one_is_reported(plugin_path: Path) -> None:
    proc = run_ucore(["plugins", "--json"], plugin_path, plugin_path)
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["thirdparty"]["status"] == "loaded"
    assert rows["thirdparty"]["version"] == "1.2.3"
    assert rows["thirdparty"]["hooks"] == ["ucore_register_engines"]
    assert rows["broken"]["status"].startswith("failed: ImportError: libfoo.so missing")
    assert rows["registry"]["distribution"] == "ucore (builtin)"
    assert "ucore_fetch" in rows["registry"]["hooks"]
    assert "libfoo.so missing" in proc.stderr  # warned, and the command still succeeded


def test_plugins_are_blocked_by_flag_and_environment(plugin_path: Path) -> None:
    proc = run_ucore(
        ["-p", "no:thirdparty", "-pno:broken", "plugins", "--json"], plugin_path, plugin_path
    )
    rows = {row["name"]: row["status"] for row in json.loads(proc.stdout)}
    assert rows["thirdparty"] == "blocked" and rows["broken"] == "blocked"
    assert proc.stderr == ""
    proc = run_ucore(
        ["plugins", "--json"],
        plugin_path,
        plugin_path,
        UCORE_DISABLE_PLUGINS="thirdparty,broken,registry",
    )
    rows = {row["name"]: row["status"] for row in json.loads(proc.stdout)}
    assert rows["registry"] == "blocked"
    assert rows["thirdparty"] == "blocked"


def test_blocking_the_registry_client_makes_pull_fail_clearly(plugin_path: Path) -> None:
    proc = run_ucore(
        ["-p", "no:registry", "-p", "no:broken", "pull", "127.0.0.1:9/x"], plugin_path, plugin_path
    )
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines() == [
        "ucore: no plugin could fetch 127.0.0.1:9/x:latest (is the registry plugin blocked?)"
    ]
