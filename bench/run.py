#!/usr/bin/env python3
"""Run latency benchmark: ``ucore run C /bin/true`` against ``udocker run`` and proot itself.

All three run ``/bin/true`` in a container made from a small busybox image (static busybox, so
it runs under any proot whatever the host's glibc; see ``ucore.testing.images``), many times,
in turn: ucore (P1, the PRoot engine), udocker (P1, with the system proot behind a wrapper
that drops udocker's ``-k``, see below), and ``proot -r ROOT /bin/true`` directly on the ucore
container's root. What a tool adds to a container's start is its median minus proot's. For
context the bench also times ``python -c pass`` (the interpreter's start), ``python -m ucore
version`` (ucore's command line starting and loading its plugins) and ``python -c pass`` with
udocker's venv interpreter (which may start faster: no ``.pth`` files of the host's
site-packages). ``--ucore-venv`` runs ucore from a clean venv too.

Targets (from the issue): ucore's overhead over direct proot at most a third of udocker's, and
under 40 ms.

Run ``python3 bench/run.py --help``; ``bench/README.md`` explains the output.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import _common
import _image
from _common import Case, Invocation, Stats

TOOLS = ("ucore", "udocker", "proot", "python", "ucore-ver", "py-udocker")
DEFAULT_UCORE_CMD = "{python} -m ucore run {container} /bin/true"
IMAGE = "bench/busybox:latest"
CONTAINER = "bench-run"
# ucore's overhead at most this share of udocker's, and under this many seconds.
OVERHEAD_SHARE_TARGET = 1 / 3
OVERHEAD_TARGET_S = 0.040


class CommandCase(Case):
    """A fixed command with a fixed environment: nothing to prepare, exit 0 is success."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env

    def prepare(self, workdir: Path) -> Invocation:
        return Invocation(self.argv, self.env)


def setup_containers(
    args: argparse.Namespace, place: Path, udocker: Optional[Path]
) -> tuple[dict[str, str], dict[str, str], Path]:
    """Untimed: pushes the busybox image, pulls it into both stores and creates a container
    in each; returns ucore's environment, udocker's environment and the ucore container's
    root. The registry is stopped before returning: no timed run can fetch anything."""
    _common.ucore_import_path()
    from ucore.testing.images import busybox_image
    from ucore.testing.push import Pusher

    ucore_store = place / "ucore"
    udocker_store = place / "udocker"
    udocker_store.mkdir()
    base = {**os.environ, "TMPDIR": str(place)}
    registry = _image.start_registry()
    try:
        Pusher(registry.url).push(IMAGE, busybox_image())
        reference = f"{registry.address}/{IMAGE}"
        extra = {"UCORE_INSECURE": registry.address, **_common.parse_env(args.ucore_env)}
        ucore_env = _common.ucore_env(base, ucore_store, extra, installed=args.ucore_venv)
        ucore = [args.python, "-m", "ucore", "-q"]
        _common.checked([*ucore, "pull", reference], ucore_env, "ucore pull")
        _common.checked([*ucore, "create", "--name", CONTAINER, reference], ucore_env, "create")
        # P1 on both sides, chosen explicitly as for udocker below.
        _common.checked([*ucore, "setup", "--engine=P1", CONTAINER], ucore_env, "ucore setup")
        root = Path(_common.checked([*ucore, "inspect", "-p", CONTAINER], ucore_env, "inspect"))
        wrapper = _common.write_proot_wrapper(place / "proot-no-k", args.proot)
        udocker_env = _common.udocker_env(base, udocker_store, wrapper)
        if udocker is not None:
            for step in (
                ["pull", f"--registry={registry.url}", IMAGE],
                ["create", f"--name={CONTAINER}", IMAGE],
                ["setup", "--execmode=P1", CONTAINER],
            ):
                argv = _common.udocker_argv(udocker, *step)
                _common.checked(argv, udocker_env, f"udocker {step[0]}")
    finally:
        registry.stop()
    return ucore_env, udocker_env, Path(str(root).strip())


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = _common.bench_parser(
        "Time ucore run against udocker run and proot itself (/bin/true).",
        runs=20,
        warmup=3,
        tools=TOOLS,
        tools_help="ucore, udocker, proot, python (python -c pass), ucore-ver (python -m ucore"
        " version), py-udocker (python -c pass with udocker's venv interpreter)",
        ucore_cmd=DEFAULT_UCORE_CMD,
        ucore_fields="{python} {container} {store}",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else _image.CACHE_DIR / "stores",
        help="where the stores go",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter ucore runs with ({python}; also for python -c pass)",
    )
    parser.add_argument(
        "--ucore-venv",
        action="store_true",
        help="run ucore installed in a clean venv (bench/.cache/ucore-venv, built once; this"
        " checkout's core and PRoot plugin reinstalled each time), as udocker runs from its own",
    )
    parser.add_argument("--proot", default="/usr/bin/proot", help="the proot every tool uses")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per command")
    parser.add_argument("--verbose", action="store_true", help="a line per run, not per round")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless ucore meets both overhead targets"
    )
    args = _common.parse_checked(parser, argv, TOOLS)
    if "udocker" not in args.tools and "py-udocker" in args.tools:
        args.tools.remove("py-udocker")
    return args


def make_cases(
    args: argparse.Namespace,
    ucore_env: dict[str, str],
    udocker_env: dict[str, str],
    root: Path,
    udocker: Optional[Path],
) -> list[Case]:
    python = args.python
    ucore_argv = shlex.split(
        args.ucore_cmd.format(python=python, container=CONTAINER, store=ucore_env["UCORE_DIR"])
    )
    commands = {
        "ucore": (ucore_argv, ucore_env),
        "proot": ([args.proot, "-r", str(root), "/bin/true"], dict(os.environ)),
        "python": ([python, "-c", "pass"], dict(os.environ)),
        "ucore-ver": ([python, "-m", "ucore", "version"], ucore_env),
    }
    if udocker is not None:
        argv = _common.udocker_argv(udocker, "run", CONTAINER, "/bin/true")
        commands["udocker"] = (argv, udocker_env)
        udocker_python = str(udocker.parent / "python")
        commands["py-udocker"] = ([udocker_python, "-c", "pass"], dict(os.environ))
    return [CommandCase(tool, *commands[tool]) for tool in args.tools if tool in commands]


def proot_version(proot: str) -> str:
    """The version proot prints (in its banner: ``-V`` draws a logo with the number)."""
    try:
        proc = subprocess.run([proot, "-V"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    found = re.search(r"\b\d+\.\d+(?:\.\d+)?\b", proc.stdout + proc.stderr)
    return found.group(0) if found else "?"


def print_header(args: argparse.Namespace, place: Path, root: Path) -> None:
    print(f"image     {IMAGE}: one layer, static busybox (ucore.testing.images.busybox_image)")
    print(f"stores    {place} ({_common.filesystem_type(place)})")
    print(f"rounds    {args.warmup} warm-up + {args.runs} counted, in turn: {' '.join(args.tools)}")
    print(
        f"machine   {os.cpu_count()} CPUs, {_common.python_info()}, load {_common.load_average()}"
    )
    venv = " (clean venv, --ucore-venv)" if args.ucore_venv else ""
    print(f"{{python}}  {args.python}{venv}")
    versions = {
        "ucore": f"{args.ucore_cmd.format(python='{python}', container=CONTAINER, store='')}"
        f"  (`ucore setup --engine=P1 {CONTAINER}` first)",
        "udocker": f"udocker {_common.UDOCKER_VERSION} from PyPI: udocker run {CONTAINER}"
        f" /bin/true (P1; proot {args.proot} behind a sh wrapper that drops -k)",
        "proot": f"{args.proot} -r ROOT /bin/true  (proot {proot_version(args.proot)};"
        f" ROOT: the ucore container's, {root})",
        "python": "{python} -c pass: the interpreter's start",
        "ucore-ver": "{python} -m ucore version: ucore's command line and plugins loading",
        "py-udocker": f"{_common.UDOCKER_VENV}/bin/python -c pass: udocker's interpreter",
    }
    for tool in args.tools:
        print(f"  {tool:<10} {versions[tool]}")


def report(stats: list[Stats]) -> bool:
    """Prints the table, the overheads over proot and the targets; returns whether ucore met
    both targets."""
    by_name = {item.name: item for item in stats}
    print()
    _common.print_table(stats)
    print()
    proot = by_name.get("proot")
    if proot is None or not proot.ok or proot.median is None:
        print("overheads          n/a (no proot median)")
        return False
    overheads: dict[str, Optional[float]] = {}
    for name in ("ucore", "udocker"):
        item = by_name.get(name)
        if item is not None:
            overheads[name] = item.median - proot.median if item.ok and item.median else None
    print(f"overhead over proot direct (median - proot's median {proot.median * 1000:.1f} ms):")
    for name, value in overheads.items():
        text = f"{value * 1000:7.1f} ms" if value is not None else "    n/a"
        print(f"  {name:<16} {text}")
    ucore, udocker = overheads.get("ucore"), overheads.get("udocker")
    share_ok: Optional[bool] = None
    if ucore is not None and udocker is not None and udocker > 0:
        share = ucore / udocker
        share_ok = share <= OVERHEAD_SHARE_TARGET
        text = f"{share:6.2f}x   target <= {OVERHEAD_SHARE_TARGET:.2f}x"
    else:
        text = "   n/a (needs ucore's and udocker's overheads)"
    _common.print_check("ucore/udocker overhead", text, share_ok)
    absolute_ok = None if ucore is None else ucore < OVERHEAD_TARGET_S
    text = "   n/a (no ucore median)" if ucore is None else f"{ucore * 1000:6.1f} ms target < 40 ms"
    _common.print_check("ucore overhead", text, absolute_ok)
    python, version = by_name.get("python"), by_name.get("ucore-ver")
    contexts = (
        (python, "python -c pass"),
        (version, "ucore version"),
        (by_name.get("py-udocker"), "udocker's python"),
    )
    for item, label in contexts:
        if item is not None and item.ok and item.median is not None:
            print(f"{label:<18} {item.median * 1000:6.1f} ms (context)")
    run = by_name.get("ucore")
    if run is not None and run.ok and version is not None and version.ok:
        assert run.median is not None and version.median is not None
        spent = (run.median - version.median) * 1000
        print(f"{'run - version':<18} {spent:6.1f} ms (ucore run beyond starting ucore)")
    return bool(share_ok and absolute_ok)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    needed = {_common.GNU_TIME: "time", "docker-registry": "docker-registry", args.proot: "proot"}
    missing = [package for binary, package in needed.items() if shutil.which(binary) is None]
    if missing:
        raise SystemExit(f"missing tools: apt-get install {' '.join(missing)}")
    udocker = _common.ensure_udocker() if "udocker" in args.tools else None
    if args.ucore_venv:
        args.python = str(_common.ensure_ucore_venv())
    _common.compile_sources(args.python)
    args.store_dir.mkdir(parents=True, exist_ok=True)
    place = Path(tempfile.mkdtemp(prefix="ucore-bench-run-", dir=args.store_dir))
    try:
        ucore_env, udocker_env, root = setup_containers(args, place, udocker)
        cases = make_cases(args, ucore_env, udocker_env, root, udocker)
        print()
        print_header(args, place, root)
        print()
        samples = _common.alternate(
            cases,
            rounds=args.runs,
            warmup=args.warmup,
            workroot=place / "runs",
            timeout=args.timeout,
            compact=not args.verbose,
        )
    finally:
        shutil.rmtree(place, ignore_errors=True)
    stats = [_common.summarize(samples, case.name) for case in cases]
    met = report(stats)
    if args.json:
        meta = {
            "image": IMAGE,
            "store_dir": str(args.store_dir),
            "ucore_cmd": args.ucore_cmd,
            "proot": args.proot,
            "cpus": os.cpu_count(),
        }
        _common.write_json(args.json, meta, samples, stats)
    print(f"\nload {_common.load_average()}; bench took {time.monotonic() - started:.0f} s")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
