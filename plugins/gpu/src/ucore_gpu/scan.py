"""ucore's own discovery, the last source: the kernel driver's ``/proc`` files, ``/dev``, the
linker cache and the library directories.

It needs no NVIDIA tool on the host. The driver version comes from
``/proc/driver/nvidia/version``; each GPU's index (PCI bus order, as nvidia-smi and Docker
number them), UUID and device minor from ``/proc/driver/nvidia/gpus/*/information``; without
those files, from the ``/dev/nvidiaN`` nodes alone.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Optional

from ucore_gpu import catalog, files, ldcache
from ucore_gpu.inventory import Extra, Gpu, Inventory, number
from ucore_gpu.settings import Settings

_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", re.ASCII)
_NODE = re.compile(r"^nvidia(\d+)$", re.ASCII)
_MAX_TEXT = 1 << 16


def driver_version(settings: Settings) -> Optional[str]:
    text = _read(settings.host("/proc/driver/nvidia/version"))
    found = _VERSION.search(text or "")
    return found.group(1) if found else None


def scan(settings: Settings) -> Inventory:
    notes: list[str] = []
    driver = driver_version(settings)
    if driver is None:
        return Inventory("scan", notes=("no NVIDIA kernel driver (/proc/driver/nvidia/version)",))
    gpus = _gpus(settings, notes)
    control = tuple(p for p in catalog.CONTROL if is_node(settings, p))
    if "/dev/nvidiactl" not in control:
        notes.append("/dev/nvidiactl is missing: CUDA cannot open the driver")
    libraries = _libraries(settings, driver, notes)
    binaries = tuple(
        found
        for name in catalog.UTILITIES
        if (found := _first(settings, [f"{d}/{name}" for d in catalog.BIN_DIRS]))
    )
    extras = [Extra(p, p) for p, _, _ in catalog.ICDS if os.path.isfile(settings.host(p))]
    extras += [Extra(p, p) for p in catalog.SOCKETS if os.path.exists(settings.host(p))]
    return Inventory(
        "scan",
        driver=driver,
        gpus=tuple(gpus),
        control=control,
        libraries=libraries,
        binaries=binaries,
        extras=tuple(extras),
        notes=tuple(notes),
    )


def _gpus(settings: Settings, notes: list[str]) -> list[Gpu]:
    nodes = {}
    try:
        for name in os.listdir(settings.host("/dev")):
            m = _NODE.match(name)
            if m and is_node(settings, f"/dev/{name}"):
                nodes[int(m.group(1))] = f"/dev/{name}"
    except OSError:
        pass
    info_dir = settings.host("/proc/driver/nvidia/gpus")
    try:
        buses = sorted(os.listdir(info_dir))
    except OSError:
        buses = []
    gpus: list[Gpu] = []
    for bus in buses:
        fields = _fields(_read(os.path.join(info_dir, bus, "information")) or "")
        minor = fields.get("Device Minor", "")
        index = number(minor)
        if index is None:
            continue
        node = nodes.get(index)
        if node is None:
            notes.append(f"GPU {bus} has no /dev/nvidia{minor} node")
            continue
        uuid = fields.get("GPU UUID", "")
        gpus.append(Gpu(len(gpus), uuid, bus, fields.get("Model", ""), (node,)))
    if not buses:  # no per-GPU files: the nodes alone, numbered by minor
        gpus = [Gpu(i, nodes=(nodes[m],)) for i, m in enumerate(sorted(nodes))]
        if gpus:
            notes.append("no /proc/driver/nvidia/gpus: GPUs known by their nodes, without UUIDs")
    gpus += _mig(settings, gpus)
    return gpus


def _mig(settings: Settings, gpus: list[Gpu]) -> list[Gpu]:
    """MIG instances as the driver lists them (``capabilities/gpuN/mig/giG/ciC/access``): each
    needs its GPU's node and its instance's capability nodes. Their UUIDs come from NVML, which
    this source does not load, so they are selected as ``GPU:GI:CI``; CDI names them by UUID."""
    base = settings.host("/proc/driver/nvidia/capabilities")
    out = []
    for gpu in gpus:
        minor = gpu.nodes[0][len("/dev/nvidia") :]
        mig = os.path.join(base, f"gpu{minor}", "mig")
        for gi in _listing(mig, "gi"):
            gi_minor = _cap_minor(os.path.join(mig, gi, "access"))
            for ci in _listing(os.path.join(mig, gi), "ci"):
                ci_minor = _cap_minor(os.path.join(mig, gi, ci, "access"))
                caps = [f"/dev/nvidia-caps/nvidia-cap{m}" for m in (gi_minor, ci_minor) if m]
                name = f"{gpu.number}:{gi[2:]}:{ci[2:]}"
                nodes = (*gpu.nodes, *caps)
                out.append(Gpu(-1, "", gpu.pci, gpu.model, nodes, (name,), gpu.number))
    return out


def _listing(path: str, prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(path) if n.startswith(prefix) and n[2:].isdigit())
    except OSError:
        return []


def _cap_minor(path: str) -> Optional[str]:
    m = re.search(r"DeviceFileMinor:\s*(\d+)", _read(path) or "")
    return m.group(1) if m else None


def _libraries(settings: Settings, driver: str, notes: list[str]) -> tuple[str, ...]:
    """The running driver's libraries, from the linker cache then the library directories;
    each real file once. A library found only in an older driver's version is noted."""
    candidates = [e.path for e in ldcache.read(settings.host("/etc/ld.so.cache"))]
    for d in catalog.LIB_DIRS:
        try:
            candidates += [f"{d}/{n}" for n in sorted(os.listdir(settings.host(d)))]
        except OSError:
            continue
    found: dict[str, str] = {}
    stale: set[str] = set()
    for path in candidates:
        if catalog.library_name(os.path.basename(path)) is None:
            continue
        real = os.path.realpath(settings.host(path))
        if not real.startswith(settings.root.rstrip("/") + "/") or not os.path.isfile(real):
            continue
        name = os.path.basename(real)
        if catalog.of_driver(name, driver):
            found.setdefault(name, settings.back(real))
        else:
            stale.add(name)
    names = {catalog.library_name(n) for n in found}
    left = sorted(n for n in stale if catalog.library_name(n) not in names)
    if left:
        notes.append(f"left out, not of driver {driver}: {', '.join(left)}")
    if not any(n.startswith("libcuda.so.") for n in found):
        notes.append(f"libcuda.so.{driver} not found (linker cache, {catalog.LIB_DIRS[0]}, ...)")
    return tuple(sorted(found.values()))


def _first(settings: Settings, paths: list[str]) -> Optional[str]:
    for path in paths:
        real = settings.host(path)
        if os.path.isfile(real) and os.access(real, os.X_OK):
            return path
    return None


def is_node(settings: Settings, path: str) -> bool:
    """A character device; on a synthetic device root, where tests cannot make nodes, any
    file."""
    try:
        mode = os.stat(settings.host(path)).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or (settings.synthetic and stat.S_ISREG(mode))


def _read(path: str) -> Optional[str]:
    return files.read_text(path, _MAX_TEXT)


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out
