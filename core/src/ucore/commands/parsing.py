"""The argument parser and help formatters of every ``ucore`` command (and of plugins that
add commands, such as ``ucore mpi``).

Below :mod:`ucore.cli` and the command modules, which both build parsers with them.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn, Optional

from ucore.values.errors import UsageError


def _columns() -> int:
    """The terminal width, found as :func:`shutil.get_terminal_size` finds it.

    argparse builds a help formatter for every option it adds (to check its metavar), and
    each formatter without a width imports shutil to ask for one: 2 ms of every ``ucore run``,
    which never prints help.
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            columns = os.get_terminal_size(1).columns
        except OSError:
            columns = 0
    return columns if columns > 0 else 80


class _FixedWidth(argparse.HelpFormatter):
    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: Optional[int] = None,
    ) -> None:
        # argparse leaves two columns free, as here
        super().__init__(prog, indent_increment, max_help_position, width or _columns() - 2)


class Formatter(_FixedWidth):
    """argparse's default help layout, without the shutil import."""


class RawFormatter(_FixedWidth, argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs kept as written (the exit status table)."""


class Parser(argparse.ArgumentParser):
    """argparse prints usage plus an error on two lines and exits 2; we want one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        raise UsageError(f"{command}: {message}" if command else message)
