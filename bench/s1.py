#!/usr/bin/env python3
"""Run latency of the singularity engine (S1): ``ucore run C /bin/true`` against
``apptainer exec`` on the same sandbox, measured in the same run.

It needs a real Apptainer, which this host (Debian bookworm) lacks: run it inside the Debian
unstable root of ``tests/support/apptainer.py``, which enters it, installs ucore there and runs
this script as the unprivileged user ``ucore-test``::

    python3 tests/support/apptainer.py bench [--runs N]

Untimed setup: the static busybox image (``ucore.testing.images``) is pushed to a local
registry, pulled into a fresh store, and a container made and set to the singularity engine;
the registry is stopped before the timed rounds. Cases, alternated round by round
(``_common.alternate``):

* ``ucore-s1``: ``python -m ucore run bench-s1 /bin/true``: root inside, the default, so
  Apptainer's ``--fakeroot``;
* ``apptainer-fakeroot``: ``apptainer exec --fakeroot ROOT /bin/true`` on the container's root
  (with ``--cleanenv --no-mount bind-paths``, as the engine leaves the site's default binds out);
* ``apptainer-userns``: the same as the invoking user (``--userns``), the runtime's cheapest run;
* ``ucore-version``: ``python -m ucore version``, ucore's command line starting and loading its
  plugins, and ``python``: ``python -c pass``, the interpreter's start, for context.

What ucore adds to Apptainer is ``ucore-s1`` minus ``apptainer-fakeroot``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import _common
from _common import CommandCase

CONTAINER = "bench-s1"
IMAGE = "bench/busybox:latest"


def setup(place: Path, python: str) -> tuple[dict[str, str], Path]:
    """The store with the container (ucore's environment, the container's root)."""
    _common.ucore_import_path()
    from ucore.testing.images import busybox_image
    from ucore.testing.push import Pusher
    from ucore.testing.registry import RegistryServer

    registry = RegistryServer(place / "registry")
    registry.start()
    try:
        Pusher(registry.url).push(IMAGE, busybox_image())
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": os.environ.get("HOME", "/"),
            "UCORE_DIR": str(place / "store"),
            "UCORE_INSECURE": registry.address,
            "TMPDIR": str(place),
        }
        ucore = [python, "-m", "ucore", "-q"]
        reference = f"{registry.address}/{IMAGE}"
        _common.checked([*ucore, "pull", reference], env, "ucore pull")
        _common.checked([*ucore, "create", "--name", CONTAINER, reference], env, "create")
        _common.checked([*ucore, "setup", "--engine=singularity", CONTAINER], env, "setup")
        root = _common.checked([*ucore, "inspect", "-p", CONTAINER], env, "inspect").strip()
    finally:
        registry.stop()
    return env, Path(root)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="counted rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted rounds (default 2)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter ucore runs in")
    args = parser.parse_args(argv)
    apptainer = shutil.which("apptainer") or shutil.which("singularity")
    if apptainer is None:
        print("no apptainer or singularity here: run python3 tests/support/apptainer.py bench")
        return 2
    with tempfile.TemporaryDirectory(prefix="ucore-bench-s1-") as scratch:
        place = Path(scratch)
        env, root = setup(place, args.python)
        print(_common.command_version([apptainer, "--version"]), f"uid {os.getuid()}")
        # bind-paths off, as the engine runs it (NO_MOUNT): none of the site's default binds.
        runtime = [apptainer, "--silent", "exec", "--cleanenv", "--no-mount", "bind-paths"]
        cases = [
            CommandCase(
                "ucore-s1", [args.python, "-m", "ucore", "run", CONTAINER, "/bin/true"], env
            ),
            CommandCase(
                "apptainer-fakeroot", [*runtime, "--fakeroot", str(root), "/bin/true"], env
            ),
            CommandCase("apptainer-userns", [*runtime, "--userns", str(root), "/bin/true"], env),
            CommandCase("ucore-version", [args.python, "-m", "ucore", "version"], env),
            CommandCase("python", [args.python, "-c", "pass"], env),
        ]
        samples = _common.alternate(
            cases,
            rounds=args.runs,
            warmup=args.warmup,
            workroot=place / "work",
            timeout=60,
            compact=True,
        )
    stats = [_common.summarize(samples, case.name) for case in cases]
    _common.print_table(stats)
    by_name = {item.name: item for item in stats}
    _common.print_ratio(by_name["ucore-s1"], by_name["apptainer-fakeroot"])
    ucore, runtime_stats = by_name["ucore-s1"], by_name["apptainer-fakeroot"]
    if ucore.median is not None and runtime_stats.median is not None:
        added = (ucore.median - runtime_stats.median) * 1000
        print(f"ucore adds {added:.1f} ms (median) to apptainer exec --fakeroot")
    return 0 if all(item.ok for item in stats) else 1


if __name__ == "__main__":
    sys.exit(main())
