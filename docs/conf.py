"""Sphinx configuration for ucore's documentation (``tox -e docs``).

Built with warnings as errors and in nitpicky mode, so every cross-reference (``:doc:``, every
Python role, each name in a signature) and every included file must resolve: that is the check
of the internal links. Sphinx's ``linkcheck`` builder is not used: it checks only external URLs
(it leaves internal anchors "unchecked"), and the build must not need a network. For the same
reason there are no intersphinx inventories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

project = "ucore"
copyright = "the ucore authors, Apache-2.0"
release = (Path(__file__).resolve().parents[1] / "VERSION").read_text(encoding="ascii").strip()
version = release

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
nitpicky = True
html_theme = "alabaster"

# --- autodoc -----------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# The hook specifications and values annotate with names imported only for type checkers
# (``from __future__ import annotations``): autodoc keeps them as written, and the Python
# domain resolves each to the one documented object of that name (``Session`` is
# :class:`ucore.session.Session`), so no alias table has to follow the code.
#
# The standard library and pluggy are not documented here, and without intersphinx (no
# network) their names cannot resolve: they are left as plain text.
nitpick_ignore_regex = [
    ("py:class", r"(argparse|pathlib|collections\.abc|typing|types|pluggy|threading)\..*"),
    ("py:class", r"(Path|Any|Optional|Callable|Iterator|Mapping|Sequence|ClassVar|NoneType)"),
    # The core's own plumbing, which a signature names but no plugin uses.
    ("py:class", r"(ucore\.plugins\.manager\.)?Plugins"),
]


def _drop_field_aliases(
    _app: object, _what: str, _name: str, _obj: object, _options: object, lines: list[str]
) -> None:
    """A named tuple's field without a ``#:`` comment gets Python's docstring "Alias for field
    number N": true, but it tells a reader nothing the signature does not."""
    if lines and lines[0].startswith("Alias for field number"):
        lines.clear()


def setup(app: Any) -> dict[str, bool]:
    app.connect("autodoc-process-docstring", _drop_field_aliases)
    return {"parallel_read_safe": True}
