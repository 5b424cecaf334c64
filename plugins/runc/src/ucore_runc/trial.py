"""A trial container: the probe's proof that a runtime works here, with ucore's own config.

Its root filesystem is an empty directory in which the host's ``/usr`` (and ``/bin``, ``/lib``
... as the host has them: directories bound read-only, symbolic links copied) let the host's
``true`` run; nothing is written anywhere but in that directory, removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from ucore.values.model import Mount, RunSpec

if TYPE_CHECKING:
    from ucore_runc.discover import Runtime
    from ucore_runc.spec import Identity

SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
_PATH = "/usr/bin:/bin"
#: Exit status of the probe's child when ucore's own set-up failed before the runtime started.
_SETUP_FAILED = 125


def attempt(
    runtime: Runtime,
    scratch: Path,
    global_options: Sequence[str],
    steps: Sequence[Callable[[], None]],
    who: Identity,
    *,
    proc: bool,
) -> Optional[str]:
    """None when a container runs; else why not, in one line."""
    from ucore_runc import launch
    from ucore_runc import spec as oci
    from ucore_runc.discover import run_probe

    true = shutil.which("true", path=_PATH)
    if true is None:
        return None  # nothing to try with; the first real run will tell
    base = Path(tempfile.mkdtemp(prefix=f"{runtime.kind}-trial-", dir=scratch))
    try:
        rootfs = base / "rootfs"
        rootfs.mkdir()
        mounts = []
        for name in SYSTEM:
            host = f"/{name}"
            if os.path.islink(host):
                os.symlink(os.readlink(host), rootfs / name)
            elif os.path.isdir(host):
                (rootfs / name).mkdir()
                mounts.append(Mount(host, host, readonly=True))
        spec = RunSpec(argv=(true,), env=(("PATH", _PATH),), mounts=tuple(mounts))
        run = launch.Run(runtime, base, global_options)
        run.write_config(oci.config(spec, rootfs, who, proc=proc, terminal=False))
        try:
            result = run_probe(run.command(detach=False), preexec=_setup(steps))
        except RuntimeError as exc:
            return str(exc)
        if result.returncode == 0:
            return None
        lines = [x.strip() for x in result.stderr.splitlines() if x.strip()]
        why = run.error() or (lines[-1] if lines else f"exit status {result.returncode}")
        return f"{runtime.kind} cannot start a container here: {why}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _setup(steps: Sequence[Callable[[], None]]) -> Optional[Callable[[], None]]:
    """The steps as a ``preexec_fn`` that reports its own failure on stderr (``subprocess``
    would only say that something failed in it)."""
    if not steps:
        return None

    def run() -> None:
        try:
            for step in steps:
                step()
        except Exception as exc:  # noqa: BLE001 - any failure must reach the probe's report
            os.write(2, f"{exc}\n".encode(errors="replace"))
            os._exit(_SETUP_FAILED)

    return run
