"""The second source: ``nvidia-container-cli list``, from NVIDIA's libnvidia-container.

Where a site installed it (without CDI specs), it knows the driver's files best: it prints one
path a line, device nodes, utilities, libraries and daemon sockets. GPU identities (index,
UUID) still come from the driver's ``/proc`` files, as in the scan. Under a device root only a
tool inside that root is run, so a synthetic host never mixes with the real one.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from ucore_gpu import catalog
from ucore_gpu.inventory import Extra, Inventory
from ucore_gpu.settings import Settings

TIMEOUT = 20.0
_GPU_NODE = re.compile(r"^/dev/nvidia\d+$")


def tool(settings: Settings) -> Optional[str]:
    if settings.container_cli:
        return settings.container_cli
    if settings.synthetic:
        inside = settings.host("/usr/bin/nvidia-container-cli")
        return inside if os.access(inside, os.X_OK) else None
    import shutil

    return shutil.which("nvidia-container-cli")


def discover(settings: Settings, base: Inventory) -> tuple[Optional[Inventory], str]:
    """The inventory from the tool's listing, with GPU identities from ``base`` (the scan);
    None and why when the tool is missing or fails."""
    cli = tool(settings)
    if cli is None:
        return None, "nvidia-container-cli not installed"
    import subprocess  # only where the tool is installed: its import costs a few ms

    try:
        done = subprocess.run(
            [cli, "list"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-container-cli list failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"nvidia-container-cli list failed: {last[:200]}"
    nodes, libraries, binaries, extras = [], [], [], []
    for line in done.stdout.splitlines()[:4096]:
        path = line.strip()
        if not path.startswith("/") or ".." in path.split("/") or "\0" in path:
            continue
        if path.startswith("/dev/"):
            nodes.append(path)
        elif catalog.library_name(os.path.basename(path)):
            libraries.append(path)
        elif "/bin/" in path or "/sbin/" in path:
            binaries.append(path)
        elif path.startswith(("/run/nvidia", "/var/run/nvidia")):
            extras.append(Extra(path, path))
    listed = set(nodes)
    gpus = tuple(g for g in base.gpus if set(g.nodes) & listed or g.number < 0)
    if not gpus:
        return None, "nvidia-container-cli lists no GPU"
    driver = base.driver
    kept = tuple(p for p in libraries if catalog.of_driver(os.path.basename(p), driver))
    icds = tuple(e for e in base.extras if e not in extras)
    return (
        Inventory(
            "nvidia-container-cli",
            driver=driver,
            gpus=gpus,
            control=tuple(n for n in nodes if not _GPU_NODE.match(n) and "caps" not in n),
            libraries=kept,
            binaries=tuple(binaries),
            extras=(*extras, *icds),
            notes=base.notes,
        ),
        "",
    )
