"""Fakechroot engine for ucore (udocker's F1-F4 execution modes)."""

__version__ = "0.1.0"
