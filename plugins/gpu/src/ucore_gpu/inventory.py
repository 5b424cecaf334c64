"""What a discovery source found: the driver, its GPUs, and the files a container needs.

Paths here are host paths (``/dev/nvidia0``, ``/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15``);
:class:`~ucore_gpu.settings.Settings` maps them under a device root. Values are named tuples
for the same reason as the core's (:mod:`ucore.values.model`): cheap on the run path.
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Optional


class Gpu(NamedTuple):
    """One GPU or MIG instance a request can select."""

    #: Docker's and nvidia-smi's index (PCI bus order); -1 for a MIG instance.
    number: int
    uuid: str = ""
    pci: str = ""
    model: str = ""
    #: Its device nodes (``/dev/nvidia1``; a MIG instance's capability nodes too).
    nodes: tuple[str, ...] = ()
    #: Other names it answers to (CDI device names such as ``0`` or ``0:1`` for MIG).
    names: tuple[str, ...] = ()
    #: For a MIG instance, the index of its GPU.
    parent: int = -1


class Extra(NamedTuple):
    """A file bound at a fixed place (a socket, a loader's ICD file), host and container."""

    host: str
    target: str


class Inventory(NamedTuple):
    source: str
    driver: str = ""
    gpus: tuple[Gpu, ...] = ()
    #: Nodes every GPU container needs (``/dev/nvidiactl``, ``/dev/nvidia-uvm``, …).
    control: tuple[str, ...] = ()
    #: Real files of the driver's libraries (the running driver's version only).
    libraries: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()
    extras: tuple[Extra, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: What is missing or was left out, and why (for ``info --devices``).
    notes: tuple[str, ...] = ()


def number(text: str) -> Optional[int]:
    """``text`` as a non-negative number when it is ASCII digits, else None. ``str.isdigit``
    also accepts superscripts (``²``) that ``int`` refuses, and ``int`` refuses more than 4300
    digits: a number too long to be an index is ``sys.maxsize``, which no GPU has."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) < 19 else sys.maxsize
