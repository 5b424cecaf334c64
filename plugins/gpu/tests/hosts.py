"""Small synthetic host trees for the unit tests (no compiled libraries: those are in the
integration tests' ``support.gpuhost``). Nothing here is a real GPU or HCA."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from ucore_gpu.settings import Settings

DRIVER = "550.54.15"
UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-1111-2222-33334444555{i}" for i in range(4)]
#: Any real shared object with a soname, copied under driver library names.
_SAMPLE = "/lib/x86_64-linux-gnu/libz.so.1"


class Blocked(Exception):
    """Not an OSError, which the code under test may catch."""


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail, rather than hang, a test of something that must not block (a FIFO read): the
    alarm repeats, in case the code under test swallows one."""

    def expire(signum: int, frame: object) -> None:
        raise Blocked(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write(root: Path, path: str, text: str = "", mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)
    return target


def gpu_host(root: Path, gpus: int = 4, driver: str = DRIVER, procfs: bool = True) -> Settings:
    """``gpus`` synthetic GPUs (regular files as nodes), the driver's version file, a few
    libraries of this driver and of an older one, and nvidia-smi."""
    write(
        root,
        "/proc/driver/nvidia/version",
        f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  Tue Mar  5 2024\n",
    )
    for i in range(gpus):
        write(root, f"/dev/nvidia{i}", UUIDS[i] + "\n", 0o666)
        if procfs:
            bus = f"0000:{0x1B + i:02x}:00.0"
            write(
                root,
                f"/proc/driver/nvidia/gpus/{bus}/information",
                f"Model: \t\t NVIDIA H200\nGPU UUID: \t {UUIDS[i]}\nBus Location: \t {bus}\n"
                f"Device Minor: \t {i}\n",
            )
    for node in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        write(root, f"/dev/{node}", "", 0o666)
    lib = root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True, exist_ok=True)
    for name in ("libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so"):
        shutil.copy(_SAMPLE, lib / f"{name}.{driver}")
    os.symlink(f"libcuda.so.{driver}", lib / "libcuda.so.1")
    old = root / "usr/lib64"
    old.mkdir(parents=True)
    shutil.copy(_SAMPLE, old / "libcuda.so.535.104.05")
    shutil.copy(_SAMPLE, old / "libnvidia-nvvm.so.535.104.05")
    write(root, "/usr/bin/nvidia-smi", "#!/bin/sh\necho smi\n", 0o755)
    write(root, "/etc/OpenCL/vendors/nvidia.icd", "libnvidia-opencl.so.1\n")
    return Settings(root=str(root))


def cdi_spec(root: Path, gpus: int = 2, driver: str = DRIVER, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [
            *(
                {"name": str(i), "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{i}"}]}}
                for i in range(gpus)
            ),
            *(
                {"name": UUIDS[i], "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{i}"}]}}
                for i in range(gpus)
            ),
            {
                "name": "all",
                "containerEdits": {
                    "deviceNodes": [{"path": f"/dev/nvidia{i}"} for i in range(gpus)]
                },
            },
        ],
        "containerEdits": {
            "env": [
                "NVIDIA_VISIBLE_DEVICES=void",
                "NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/x86_64-linux-gnu",
            ],
            "deviceNodes": [{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia-uvm"}],
            "mounts": [
                {
                    "hostPath": f"/usr/lib/x86_64-linux-gnu/libcuda.so.{driver}",
                    "containerPath": f"/usr/lib/x86_64-linux-gnu/libcuda.so.{driver}",
                    "options": ["ro", "nosuid", "nodev", "bind"],
                },
                {
                    "hostPath": "/usr/bin/nvidia-smi",
                    "containerPath": "/usr/bin/nvidia-smi",
                    "options": ["ro", "nosuid", "nodev", "bind"],
                },
            ],
            "hooks": [
                {
                    "hookName": "createContainer",
                    "path": "/usr/bin/nvidia-ctk",
                    "args": [
                        "nvidia-ctk",
                        "hook",
                        "create-symlinks",
                        "--link",
                        "libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so",
                    ],
                },
                {
                    "hookName": "createContainer",
                    "path": "/usr/bin/nvidia-ctk",
                    "args": [
                        "nvidia-ctk",
                        "hook",
                        "update-ldcache",
                        "--folder",
                        "/usr/lib/x86_64-linux-gnu",
                    ],
                },
            ],
        },
    }
    spec.update(changes)
    return spec


def write_spec(root: Path, spec: Any, name: str = "nvidia.json", raw: Optional[str] = None) -> Path:
    text = raw if raw is not None else json.dumps(spec)
    return write(root, f"/etc/cdi/{name}", text)


def hca_host(
    root: Path,
    hcas: tuple[tuple[str, str], ...] = (("mlx5_0", "0000:3b:00.0"), ("mlx5_1", "0000:3b:00.2")),
) -> Settings:
    for i, (name, pci) in enumerate(hcas):
        device = root / f"sys/devices/pci0000:3a/{pci}"
        hca = device / "infiniband" / name
        (hca / "ports/1").mkdir(parents=True)
        (root / "sys/class/infiniband").mkdir(parents=True, exist_ok=True)
        os.symlink(
            os.path.relpath(hca, root / "sys/class/infiniband"),
            root / f"sys/class/infiniband/{name}",
        )
        os.symlink(os.path.relpath(device, hca), hca / "device")
        write(root, f"/sys/class/infiniband_verbs/uverbs{i}/ibdev", name + "\n")
        write(root, f"/sys/class/infiniband_mad/umad{i}/ibdev", name + "\n")
        write(root, f"/dev/infiniband/uverbs{i}", "", 0o666)
        write(root, f"/dev/infiniband/umad{i}", "", 0o666)
    write(root, "/dev/infiniband/rdma_cm", "", 0o666)
    return Settings(root=str(root))
