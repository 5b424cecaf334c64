"""The command modules (one per group of commands) and the options several of them share.

Each module has ``add_commands(subparsers, common)``; the CLI imports only the module of the
command being run (see ``ucore.cli.COMMANDS``), so what is shared lives here, not in one of them.
"""

from __future__ import annotations

import argparse


def add_registry_options(p: argparse.ArgumentParser, platform: bool = True) -> None:
    p.add_argument(
        "--registry",
        metavar="URL",
        help="registry for names without one (host[:port] or http(s)://host[:port])",
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow plain HTTP to the --registry host"
    )
    if platform:
        p.add_argument(
            "--platform",
            metavar="OS/ARCH[/VARIANT]",
            help="platform to pull (default: this host's)",
        )
