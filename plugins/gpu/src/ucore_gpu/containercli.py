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

from ucore_gpu import catalog, scan
from ucore_gpu.inventory import Extra, Inventory
from ucore_gpu.settings import Settings

TIMEOUT = 20.0
#: A listing is a few kilobytes; a tool printing more than this is stopped.
MAX_OUTPUT = 1 << 20
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
    try:
        status, out, err = _listing(cli)
    except OSError as exc:
        return None, f"nvidia-container-cli list failed: {exc}"
    except RuntimeError as exc:
        return None, f"nvidia-container-cli list {exc}"
    if status != 0:
        last = (err.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        return None, f"nvidia-container-cli list failed: {last[:200]}"
    nodes, libraries, binaries, extras = [], [], [], []
    for line in out.decode("utf-8", "replace").splitlines()[:4096]:
        path = line.strip()
        if not path.startswith("/") or ".." in path.split("/") or "\0" in path:
            continue
        if "\ufffd" in path:  # not UTF-8: no such driver file, and no path a runtime takes
            continue
        if path.startswith("/dev/"):
            if scan.is_node(settings, path):
                nodes.append(path)
        elif catalog.library_name(os.path.basename(path)):
            if os.path.isfile(settings.host(path)):
                libraries.append(path)
        elif "/bin/" in path or "/sbin/" in path:
            if os.path.isfile(settings.host(path)):
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


def _listing(cli: str) -> tuple[int, bytes, bytes]:
    """Run ``cli list``: its status, output and error output. RuntimeError when it runs past
    :data:`TIMEOUT` or prints more than :data:`MAX_OUTPUT` (it is killed then): a tool that
    hangs or floods must cost neither the run nor its memory."""
    import contextlib
    import selectors
    import signal
    import subprocess  # only where the tool is installed: its import costs a few ms
    import time

    deadline = time.monotonic() + TIMEOUT
    proc = subprocess.Popen(
        [cli, "list"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, killed with whatever it started
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    taken = {out: bytearray(), err: bytearray()}
    try:
        with selectors.DefaultSelector() as waiting:
            for fd in taken:
                waiting.register(fd, selectors.EVENT_READ)
            while waiting.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"did not finish within {TIMEOUT:g} s")
                for key, _ in waiting.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        waiting.unregister(key.fd)
                    taken[key.fd] += chunk
                    if len(taken[key.fd]) > MAX_OUTPUT:
                        raise RuntimeError(f"printed more than {MAX_OUTPUT >> 20} MiB")
        try:
            status = proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"did not finish within {TIMEOUT:g} s") from None
    finally:
        with contextlib.suppress(OSError):  # gone with all it started
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return status, bytes(taken[out]), bytes(taken[err])
