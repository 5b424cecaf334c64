"""Introspection: version and plugins."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ucore import __version__

if TYPE_CHECKING:
    from ucore.session import Session


def add_commands(sub: Any, common: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    p = sub.add_parser("version", parents=[common], help="versions of ucore and its plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_version)
    q = sub.add_parser(
        "plugins",
        parents=[common],
        help="loaded plugins, their versions and the hooks they implement",
    )
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=cmd_plugins)
    return {"version": p, "plugins": q}


def cmd_version(session: Session, args: argparse.Namespace) -> int:
    rows = session.plugins.describe()
    if args.json:
        data = {
            "ucore": __version__,
            "python": sys.version.split()[0],
            "plugins": {r["name"]: r["version"] for r in rows if r["status"] == "loaded"},
        }
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print("\n".join(version_lines(rows)))
    return 0


def version_lines(rows: list[dict[str, Any]]) -> list[str]:
    """ucore's version, then each installed plugin distribution's (once, however many plugins
    it registers) and each plugin that failed to load."""
    lines = [f"ucore {__version__} (Python {sys.version.split()[0]})"]
    seen = set()
    for row in rows:
        if row["status"] == "loaded" and row["distribution"] != "ucore (builtin)":
            if row["distribution"] not in seen:
                seen.add(row["distribution"])
                lines.append(f"  {row['distribution']} {row['version']}")
        elif row["status"].startswith("failed"):
            lines.append(f"  {row['name']}: {row['status']}")
    return lines


def cmd_plugins(session: Session, args: argparse.Namespace) -> int:
    rows = session.plugins.describe()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for row in rows:
        print(f"{row['name']:<14} {row['distribution']:<20} {row['version']:<8} {row['status']}")
        if row["hooks"]:
            print(f"{'':<14} hooks: {', '.join(row['hooks'])}")
    return 0
