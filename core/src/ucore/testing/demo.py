"""``python -m ucore.testing.demo``: the main job end to end, on a machine with no Docker Hub.

Starts a local registry (Debian's ``docker-registry``), pushes a busybox image and a
multi-platform index built from scratch, then drives the real ``ucore`` command against them:
pull, images, verify, run (a throw-away container, then a named one that keeps its state), ps,
rm, save, rmi and load. Each step prints what it ran; the exit
status is non-zero if any step fails.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    from ucore.testing import images, push
    from ucore.testing.registry import RegistryServer

    with tempfile.TemporaryDirectory(prefix="ucore-demo-") as tmp:
        work = Path(tmp)
        with RegistryServer(work / "registry") as registry:
            pusher = push.Pusher(registry.url)
            busybox = images.busybox_image()
            pusher.push_image("demo/busybox", busybox, ("latest",))
            pusher.push_index("demo/multi", images.multiplatform_index(busybox), ("latest",))
            env = {**os.environ, "UCORE_DIR": str(work / "store")}
            name = f"{registry.address}/demo/busybox:latest"
            steps = [
                ["pull", name],
                ["pull", "--platform=linux/arm64", f"{registry.address}/demo/multi"],
                ["images", "-p"],
                ["verify", name],
                ["run", "--rm", name, "sh", "-c", "echo hello from a container; id; ls /"],
                ["create", "--name", "demo", name],
                ["run", "demo", "sh", "-c", "echo kept > /tmp/state"],
                ["run", "demo", "cat", "/tmp/state"],
                ["ps", "-m"],
                ["rm", "demo"],
                ["save", "-o", str(work / "busybox.tar"), name],
                ["rmi", name],
                ["load", "-i", str(work / "busybox.tar")],
                ["images", "-l"],
            ]
            for args in steps:
                print(f"$ ucore {shlex.join(args)}", flush=True)
                proc = subprocess.run([sys.executable, "-m", "ucore", *args], env=env)
                if proc.returncode != 0:
                    print(f"demo failed at 'ucore {args[0]}' (exit {proc.returncode})")
                    return proc.returncode
    print("demo finished: every step succeeded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
