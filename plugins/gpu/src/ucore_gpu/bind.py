"""Turning selected GPUs into engine-neutral bindings: device nodes, read-only transient
mounts in a private directory, and environment.

Everything lands in ``/usr/local/nvidia`` (NVIDIA's convention, already on the library path
of NVIDIA's CUDA images): ``lib64`` holds each library under its file name, its soname and,
for CUDA and NVML, the development name (what the toolkit's symlink and linker-cache hooks
provide); ``bin`` the utilities; loader files (OpenCL, Vulkan, EGL) sit under ``share`` and
``etc`` with the variables that point their loaders there. Nothing of the image is replaced or
written, and the mounts are transient: engines that must make mount points remove them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from ucore.values.model import DeviceNode, Mount
from ucore_gpu import catalog, elf
from ucore_gpu.inventory import Gpu, Inventory
from ucore_gpu.settings import Settings

PRIVATE = "/usr/local/nvidia"
LIB = f"{PRIVATE}/lib64"
BIN = f"{PRIVATE}/bin"
_ICD = {host: (rel, var) for host, rel, var in catalog.ICDS}


def bindings(
    settings: Settings, inventory: Inventory, gpus: Sequence[Gpu], env: Mapping[str, str]
) -> dict[str, Any]:
    nodes = list(dict.fromkeys([*inventory.control, *(n for g in gpus for n in g.nodes)]))
    devices = [DeviceNode(settings.host(n), n) for n in nodes]
    mounts: dict[str, Mount] = {}
    for path in inventory.libraries:
        real = settings.host(path)
        for name in library_names(real):
            mounts.setdefault(f"{LIB}/{name}", Mount(real, f"{LIB}/{name}", True, True))
    for path in inventory.binaries:
        target = f"{BIN}/{os.path.basename(path)}"
        mounts.setdefault(target, Mount(settings.host(path), target, True, True))
    added: dict[str, str] = dict(inventory.env)
    for extra in inventory.extras:
        real = settings.host(extra.host)
        if extra.host in _ICD:
            rel, var = _ICD[extra.host]
            target = f"{PRIVATE}/{rel}"
            _icd_env(added, var, target)
            mounts.setdefault(target, Mount(real, target, True, True))
        else:
            writable = _daemon_endpoint(extra.host, real)
            mounts.setdefault(extra.target, Mount(real, extra.target, not writable, True))
    added["LD_LIBRARY_PATH"] = _prepend(LIB, env.get("LD_LIBRARY_PATH", ""))
    if inventory.binaries:
        added["PATH"] = _append(BIN, env.get("PATH", ""))
    # A MIG instance the driver's files name without a UUID goes by its GPU's: CUDA then
    # shows that GPU's instances this process may use, which the capability nodes limit.
    whole = {g.number: g for g in inventory.gpus if g.number >= 0}
    chosen = [g if g.uuid or g.number >= 0 else whole.get(g.parent, g) for g in gpus]
    chosen = list(dict.fromkeys(chosen))
    ids = [g.uuid for g in chosen]
    if all(ids):
        visible = ",".join(ids)
    else:  # no UUIDs known: host indices, in the order nvidia-smi uses
        visible = ",".join(str(g.number) for g in chosen)
        added["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    added["NVIDIA_VISIBLE_DEVICES"] = visible
    added["CUDA_VISIBLE_DEVICES"] = visible
    return {"mounts": list(mounts.values()), "devices": devices, "env": added}


def _daemon_endpoint(host: str, real: str) -> bool:
    """Whether clients must write to it: a daemon's socket, or the directory of its pipes
    (MPS). Anything else a spec binds stays read-only, so a container run as root cannot
    write a host file through it."""
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return False
    if stat.S_ISSOCK(mode):
        return True
    return stat.S_ISDIR(mode) and host.startswith(("/run/nvidia", "/var/run/nvidia"))


def library_names(real: str) -> list[str]:
    """The names a library is bound under: file name, soname, development name."""
    name = os.path.basename(real)
    names = [name]
    so = elf.soname(real)
    if so and so not in names and "/" not in so:
        names.append(so)
    base = catalog.library_name(name)
    if base in catalog.DEV_NAMES and base not in names:
        names.append(base)
    return names


def _icd_env(env: dict[str, str], var: str, target: str) -> None:
    directory = os.path.dirname(target)
    if var == "VK":
        env["VK_DRIVER_FILES"] = env["VK_ICD_FILENAMES"] = target
    elif var in ("OCL_ICD_VENDORS", "__EGL_VENDOR_LIBRARY_DIRS", "VK_ADD_LAYER_PATH"):
        env[var] = directory
    else:
        env[var] = _append(directory, env.get(var, ""))


def _prepend(item: str, value: str) -> str:
    parts = [p for p in value.split(":") if p and p != item]
    return ":".join([item, *parts])


def _append(item: str, value: str) -> str:
    parts = [p for p in value.split(":") if p]
    return ":".join(parts if item in parts else [*parts, item])
