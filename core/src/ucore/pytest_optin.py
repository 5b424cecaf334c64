"""The ``pytest11`` entry point of ucore: it does nothing until a project opts in.

Installing ucore must not change the tests of the projects that share its environment, so
pytest loads only this: one ini option, ``ucore_testing``. A project that sets it to true
(``[tool.pytest.ini_options]``) gets the :mod:`ucore.testing` plugin, as ``-p ucore.testing``
does without the entry point; ``-p no:ucore`` removes even the option.

It lives outside :mod:`ucore.testing` so that loading it imports nothing of that package:
pytest rewrites the assertions of a plugin's modules (a failed check then shows both sides) only
in modules imported after it was asked to, and warns about a plugin that is already imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

OPTION = "ucore_testing"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        OPTION,
        "load the ucore.testing plugin (registry and image fixtures, engine conformance suite)",
        type="bool",
        default=False,
    )


def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Before the conftest files are imported, which may import ucore.testing themselves."""
    if early_config.getini(OPTION):
        early_config.pluginmanager.import_plugin("ucore.testing")
