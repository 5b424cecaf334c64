"""PRoot engine for ucore (udocker's P1/P2 execution modes)."""

__version__ = "0.1.0"
