"""Rootless runc and crun engines for ucore (udocker's R modes)."""

__version__ = "0.1.0"
