"""The core's layout stays what its subpackages say it is: no import cycles between its
modules, and each layer importing only the layers below it.

Read from the source as text (every ``import``, including those under ``TYPE_CHECKING`` and
inside functions: a cycle of annotations is still two modules that cannot be understood apart),
so the check needs nothing installed but the package itself.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ucore

SRC = Path(ucore.__file__).resolve().parent
#: What each subpackage may import of ucore, besides itself (the testing kit is left out:
#: it drives the whole product, as a test does).
ALLOWED = {
    "values": set(),
    "storage": {"values", "log", "session"},
    "plugins": {"values", "log", "storage", "config", "session"},
    "running": {"values", "log", "storage", "plugins", "session"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if "testing" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The ucore modules ``name`` imports (a package's module when ``from PKG import MOD``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("ucore"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in known else base


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for m in imported(name, path, known) if m != name and m in known}
        for name, path in known.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_core_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check itself can fail: a made-up pair that import each other is one cycle."""
    edges = graph()
    edges["ucore.values.errors"] = {"ucore.values.model"}
    edges["ucore.values.model"] = {"ucore.values.errors"}
    assert ["ucore.values.errors", "ucore.values.model"] in cycles(edges)


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for name, targets in graph().items():
        layer = name.split(".")[1] if name.count(".") >= 1 else ""
        if layer not in ALLOWED:
            continue
        for target in targets:
            other = target.split(".")[1] if target.count(".") >= 1 else target
            if other != layer and other not in ALLOWED[layer] and target != "ucore":
                wrong.append(f"{name} -> {target}")
    assert wrong == []


@pytest.mark.parametrize("package", ["ucore.values", "ucore.plugins"])
def test_a_package_re_exports_each_name_it_lists(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(module._NAMES)
    for name, submodule in module._NAMES.items():
        assert getattr(module, name) is getattr(
            importlib.import_module(f"{package}.{submodule}"), name
        )
    with pytest.raises(AttributeError, match="no attribute 'Nonesuch'"):
        module.Nonesuch  # noqa: B018 - the attribute access is the test


def test_importing_a_value_loads_only_its_module() -> None:
    """``from ucore.values import RunSpec`` is on ``ucore run``'s start-up path: it must not
    load the image values (attrs) that the same package re-exports."""
    script = (
        "import sys\n"
        "from ucore.values import RunSpec, PluginError\n"
        "from ucore.plugins import hookimpl\n"
        "print(sorted(m for m in ('attr', 'ucore.values.oci', 'ucore.values.events')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
