"""The documentation (``docs/``) covers the contract: every hook, every public value of the
modules plugins import, every exit status, event and setting the code has.

Read as text, so the check runs in every environment, without Sphinx; ``tox -e docs`` then
builds the pages with warnings as errors, which catches what text cannot (a reference that
does not resolve). What the code has is read from the installed packages, the core's and every
plugin's found through the ``ucore`` entry points, so a plugin that adds an event or a setting
must document it too.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import ucore
from ucore import config
from ucore.plugins import hookspecs
from ucore.plugins.manager import entry_points
from ucore.values import errors

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Modules whose every public class, function, method and constant plugins may use: the API
#: page documents each with ``automodule`` and ``:members:``.
PUBLIC_MODULES = (
    "ucore.values.model",
    "ucore.values.events",
    "ucore.values.errors",
    "ucore.plugins.registration",
)
PUBLIC_MODULES += ("ucore.plugins.carried",)


def page(name: str) -> str:
    path = DOCS / f"{name}.rst"
    if not path.is_file():
        pytest.fail(f"{path} is missing (the tests need the checkout's docs/ beside them)")
    return path.read_text(encoding="utf-8")


def all_pages() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.rst")))


def directives(text: str, kind: str) -> dict[str, list[str]]:
    """``.. KIND:: TARGET`` directives and their option lines (``:members:``...)."""
    found: dict[str, list[str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(rf"^\.\. {kind}:: (\S+)\s*$", line)
        if match:
            options = []
            for following in lines[i + 1 :]:
                if not re.match(r"^\s+:[\w-]+:", following):
                    break
                options.append(following.strip())
            found[match.group(1)] = options
    return found


def section(text: str, title: str) -> str:
    """The body of the section titled ``title`` (up to the next title of any level)."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line == title and re.fullmatch(r"([=\-~^\"'])\1+", lines[i + 1]):
            body = []
            for j in range(i + 2, len(lines)):
                underline = lines[j + 1] if j + 1 < len(lines) else ""
                title = lines[j].strip()
                if (
                    title
                    and re.fullmatch(r"([=\-~^\"'])\1+", underline)
                    and len(underline) >= len(title)
                ):
                    break
                body.append(lines[j])
            return "\n".join(body)
    pytest.fail(f"no section titled {title!r}")


# --- what the code has ---------------------------------------------------------------------


def packages() -> list[ModuleType]:
    """The core's package and every installed plugin's (by its entry point's module)."""
    found = {"ucore": ucore}
    for ep in entry_points("ucore"):
        name = ep.value.split(":")[0].split(".")[0].strip()
        try:
            found.setdefault(name, importlib.import_module(name))
        except ImportError:  # reported by ``ucore plugins``; not this test's business
            continue
    return list(found.values())


def sources() -> Iterator[tuple[Path, ast.Module]]:
    """Every module of those packages but the test support (``ucore.testing``)."""
    for package in packages():
        base = Path(package.__file__ or "").parent
        for path in sorted(base.rglob("*.py")):
            if "testing" not in path.relative_to(base).parts:
                yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def emitted_events() -> dict[str, set[str]]:
    """Event name -> its fields: each class deriving from ``Event`` (its ``name`` and annotated
    fields but ``ClassVar``\\ s), and each JSON object written with an ``"event"`` key."""
    events: dict[str, set[str]] = {}
    for _path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(b).split(".")[-1] == "Event" for b in node.bases
            ):
                name, fields = None, set()
                for item in node.body:
                    if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                        continue
                    if "ClassVar" not in ast.unparse(item.annotation):
                        fields.add(item.target.id)
                    elif item.target.id == "name" and isinstance(item.value, ast.Constant):
                        name = item.value.value
                assert name, f"event class {node.name} has no name"
                events[name] = fields
            elif isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                if "event" in keys:
                    value = node.values[keys.index("event")]
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        events[value.value] = {k for k in keys if k != "event"}
    return events


def stages() -> set[str]:
    """The stage names passed to ``session.stage`` (``pull``, ``fetch.blobs``, …)."""
    found = set()
    for _path, tree in sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).split(".")[-1] == "stage"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(node.args[0].value)
    return found


def environment_variables() -> set[str]:
    """Every ``UCORE_*`` variable the code reads (a string that is exactly such a name)."""
    return {
        node.value
        for _path, tree in sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"UCORE_[A-Z0-9_]+", node.value)
    }


# --- the checks ----------------------------------------------------------------------------


def hooks() -> list[str]:
    return sorted(
        name
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and getattr(obj, f"{hookspecs.PROJECT}_spec", None)
    )


@pytest.mark.parametrize("hook", hooks())
def test_every_hook_is_documented(hook: str) -> None:
    """Each specification says what each argument is and, unless it returns nothing, what it
    returns; the API page shows it."""
    function = getattr(hookspecs, hook)
    doc = inspect.getdoc(function) or ""
    assert doc.strip(), f"{hook} has no docstring"
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in doc, f"{hook}: no ':param {parameter}:' in its docstring"
    if inspect.signature(function).return_annotation not in ("None", None):
        assert ":returns:" in doc, f"{hook}: no ':returns:' in its docstring"
    assert f"ucore.plugins.hookspecs.{hook}" in directives(page("reference/api"), "autofunction"), (
        f"{hook} is not on the API page (docs/reference/api.rst: '.. autofunction::')"
    )


def undocumented(module: ModuleType) -> list[str]:
    """The module's public classes, functions and methods without a docstring of their own
    (read from the source: a dataclass or named tuple makes one up from its fields)."""
    tree = ast.parse(inspect.getsource(module))
    missing = []
    for node in tree.body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)) or node.name.startswith("_"):
            continue
        if not ast.get_docstring(node):
            missing.append(node.name)
        for item in node.body if isinstance(node, ast.ClassDef) else ():
            public = isinstance(item, ast.FunctionDef) and not item.name.startswith("_")
            if public and not ast.get_docstring(item):
                missing.append(f"{node.name}.{item.name}")
    return missing


def documented_constants(module: ModuleType) -> set[str]:
    """Public module-level names assigned with a ``#:`` comment right above (what autodoc
    shows), and every public one assigned at all."""
    source = inspect.getsource(module).splitlines()
    commented, assigned = set(), set()
    for node in ast.parse("\n".join(source)).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and not target.id.startswith("_"):
                assigned.add(target.id)
                if source[node.lineno - 2].lstrip().startswith("#:"):
                    commented.add(target.id)
    missing = assigned - commented
    assert not missing, f"{module.__name__}: no '#:' comment above {sorted(missing)}"
    return commented


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_value_is_documented(name: str) -> None:
    module = importlib.import_module(name)
    options = directives(page("reference/api"), "automodule").get(name)
    assert options is not None and ":members:" in options, (
        f"{name} is not on the API page with its members (docs/reference/api.rst)"
    )
    assert (module.__doc__ or "").strip(), f"{name} has no docstring"
    missing = undocumented(module)
    assert not missing, f"{name}: no docstring on {missing}"
    documented_constants(module)


def test_the_engine_protocol_is_documented() -> None:
    from ucore.plugins.engines import Engine

    assert "ucore.plugins.engines.Engine" in directives(page("reference/api"), "autoclass")
    for method in ("probe", "run"):
        assert (getattr(Engine, method).__doc__ or "").strip(), f"Engine.{method}"
    assert Engine.__doc__ and "refuses(container)" in Engine.__doc__


@pytest.mark.parametrize("code", sorted(errors.EXIT_CODES))
def test_every_exit_code_is_documented(code: int) -> None:
    rows = {line.split(" ")[0] for line in page("reference/exit-codes").splitlines()}
    assert str(code) in rows, f"exit status {code} has no row in docs/reference/exit-codes.rst"


def test_every_error_class_is_named_on_the_exit_code_page() -> None:
    text = page("reference/exit-codes")
    for cls in (errors.UcoreError, *errors.UcoreError.__subclasses__()):
        if cls is not errors.UcoreError:
            assert f"ucore.values.errors.{cls.__name__}`" in text, (
                f"{cls.__name__} is not on the page"
            )


@pytest.mark.parametrize("event", sorted(emitted_events()))
def test_every_event_and_its_fields_are_documented(event: str) -> None:
    body = section(page("reference/events"), f"``{event}``")
    for field in sorted(emitted_events()[event] - {"time"}):
        assert f"``{field}``" in body, f"event {event}: field {field} is not in its section"


def test_every_stage_is_documented() -> None:
    body = section(page("reference/events"), "Stages")
    missing = sorted(s for s in stages() if f"``{s}``" not in body)
    assert not missing, f"stages not in docs/reference/events.rst: {missing}"


@pytest.mark.parametrize("key", sorted(config._ENV))
def test_every_core_setting_is_documented(key: str) -> None:
    """A row of the settings table names the setting and its variable, and says its default."""
    text = section(page("reference/configuration"), "The core's settings")
    rows = [line for line in text.splitlines() if line.startswith(f"``{key}``")]
    assert rows, f"setting {key} has no row in docs/reference/configuration.rst"
    assert f"``{config._ENV[key]}``" in rows[0], f"{key}: its variable is not in its row"


def test_every_environment_variable_is_documented() -> None:
    text = all_pages()
    missing = sorted(v for v in environment_variables() if f"``{v}``" not in text)
    assert not missing, f"variables the code reads that no page names: {missing}"
