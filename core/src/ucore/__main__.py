"""Allows ``python -m ucore`` where the console script is not on PATH (batch jobs, tests)."""

from ucore.cli import entry

entry()
