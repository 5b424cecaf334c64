"""What a plugin's wheel carries: engine binaries and libraries taken from a distribution's
packages when the wheel was built, so that ``pip install`` alone gives a working engine.

The build (``tools/build_dists.py``) puts the files under ``carried/`` beside the plugin's
modules with a manifest, ``carried/CARRIED.json``, naming for each file the package, version,
suite and checksum it came from, its licence, its source and the newest ``GLIBC_2.N`` it needs.
A checkout or a pure wheel has no such folder, and then the plugin carries nothing: engines
fall back to what the host has. The manifest is read only when an engine looks for its binary,
and a damaged one counts as carrying nothing (the host's tools still work).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Optional

#: The manifest's file name in ``carried/``.
MANIFEST = "CARRIED.json"


class Carried(NamedTuple):
    """The carried/ folder of one plugin and its manifest."""

    directory: str
    manifest: dict[str, Any]

    def path(self, relative: str) -> Optional[str]:
        """The carried file ``relative`` (``bin/proot``) when it is there, else None."""
        path = os.path.join(self.directory, relative)
        return path if os.path.isfile(path) else None

    def package_of(self, relative: str) -> Optional[dict[str, Any]]:
        """The manifest's entry for the package ``relative`` came from."""
        for entry in self.packages():
            if relative in entry.get("files", {}):
                return entry
        return None

    def packages(self) -> list[dict[str, Any]]:
        """The manifest's package entries; a malformed manifest has none."""
        found = self.manifest.get("packages")
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []

    def origin(self, relative: str) -> str:
        """Where a carried file came from, for ``ucore info`` and messages."""
        entry = self.package_of(relative) or {}
        what = f"{entry.get('package', '?')} {entry.get('version', '?')}"
        suite = entry.get("suite")
        return (
            f"carried by the {self.manifest.get('distribution', 'plugin')} wheel:"
            f" Debian{' ' + suite if suite else ''} {what}"
        )


def load(module_file: str) -> Optional[Carried]:
    """The carried files of the plugin whose module is ``module_file`` (pass ``__file__``)."""
    directory = os.path.join(os.path.dirname(os.path.abspath(module_file)), "carried")
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return Carried(directory, manifest) if isinstance(manifest, dict) else None
