"""NVIDIA GPU and InfiniBand/SR-IOV passthrough for ucore containers."""

__version__ = "0.1.0"
