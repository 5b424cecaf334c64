"""Apptainer/Singularity engine for ucore (udocker's S1 execution mode)."""

__version__ = "0.1.0"
