#!/usr/bin/env python3
"""Job-array benchmark: N tasks start containers from one image in one store at once.

A Slurm job array or an MPI job starts many containers from one image at the same moment, on
one shared store. This bench starts N processes together (16 and 64 by default) and times
until the last has run ``/bin/true`` in its container: the time to all ranks. Each round
starts from fresh stores (under ``--store-dir``, default ``/dev/shm``); every ``/bin/true``
runs under PRoot (P1) for both tools, so the engine costs the same.

Scenarios, for each N:

* ``ucore-pull``: an empty store and a registry: every task runs ``ucore run --pull=reuse
  --name array REF /bin/true``. One task pulls and creates, the others wait for it.
* ``ucore-create``: the image pulled beforehand, no container: the same command (one create).
* ``ucore-run``: the container made beforehand: ``ucore run array /bin/true``.
* ``udocker-create``: the image pulled beforehand: ``udocker run IMAGE /bin/true``, udocker's way
  of running an image (it has no way to share one container that is made on demand: each task
  makes its own container, N in all).
* ``udocker-run``: one container made beforehand: ``udocker run array /bin/true``.

After each round the bench checks the store: for ucore, exactly one container and ``ucore
verify`` passing; for udocker, ``udocker verify`` of the image and how many containers exist
(N are expected after ``udocker-create``, one after ``udocker-run``). A failed task or check is
reported and its round left out of the medians.

Run ``python3 bench/scale.py --help``; ``bench/README.md`` explains the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import _common
import _image

IMAGE = "bench/busybox:latest"
NAME = "array"
SCENARIOS = ("ucore-pull", "ucore-create", "ucore-run", "udocker-create", "udocker-run")


@dataclass
class Round:
    """One round of one scenario: the time to all ranks and what went wrong."""

    scenario: str
    tasks: int
    seconds: float
    failed: int
    check: Optional[str] = None
    first_error: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.check is None


@dataclass
class Setup:
    ucore: list[str]
    udocker: Optional[Path]
    reference: str
    registry_url: str
    base: dict[str, str] = field(default_factory=dict)
    proot_wrapper: Optional[Path] = None


def ucore_env(setup: Setup, store: Path, args: argparse.Namespace) -> dict[str, str]:
    # PRoot for every container, as udocker's P1: the other engines' plugins are left out.
    extra = {
        "UCORE_INSECURE": setup.reference.split("/", 1)[0],
        "UCORE_DISABLE_PLUGINS": "runc,fakechroot,singularity,gpu",
    }
    return _common.ucore_env(setup.base, store, extra, installed=args.ucore_venv)


def udocker_env(setup: Setup, store: Path) -> dict[str, str]:
    return _common.udocker_env(setup.base, store, setup.proot_wrapper)


def together(argvs: Sequence[list[str]], env: dict[str, str], timeout: float) -> Round:
    """Start every command at once; seconds until the last has exited, failures, first error."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    seconds = time.perf_counter() - started
    failed = [(proc.returncode, err) for proc, (_, err) in zip(procs, outputs) if proc.returncode]
    first = ""
    if failed:
        code, err = failed[0]
        first = f"exit {code}: {_common.last_line(err)}"
    return Round("", len(argvs), seconds, len(failed), first_error=first)


def ucore_round(
    scenario: str, tasks: int, setup: Setup, place: Path, args: argparse.Namespace
) -> Round:
    env = ucore_env(setup, place / "ucore", args)
    ucore = setup.ucore
    if scenario != "ucore-pull":
        _common.checked([*ucore, "pull", setup.reference], env, "ucore pull")
    if scenario == "ucore-run":
        argv = [*ucore, "create", "--name", NAME, setup.reference]
        _common.checked(argv, env, "ucore create")
        _common.checked([*ucore, "setup", "--engine=P1", NAME], env, "ucore setup")
        command = [*ucore, "run", NAME, "/bin/true"]
    else:
        command = [*ucore, "run", "--pull=reuse", "--name", NAME]
        command += [setup.reference, "/bin/true"]
    result = together([command] * tasks, env, args.timeout)
    result.scenario = scenario
    containers = json.loads(_common.checked([*ucore, "ps", "--json"], env, "ucore ps"))
    engines = {c.get("engine") for c in containers}
    verify = subprocess.run(
        [*ucore, "verify", setup.reference], env=env, capture_output=True, text=True, check=False
    )
    if len(containers) != 1:
        result.check = f"{len(containers)} containers, not 1"
    elif engines != {"proot"}:
        result.check = f"engine {engines}, not proot"
    elif verify.returncode != 0:
        result.check = f"verify failed: {_common.last_line(verify.stderr)}"
    return result


def udocker_round(
    scenario: str, tasks: int, setup: Setup, place: Path, args: argparse.Namespace
) -> Round:
    assert setup.udocker is not None
    store = place / "udocker"
    store.mkdir()
    env = udocker_env(setup, store)

    def udocker(*words: str) -> list[str]:
        assert setup.udocker is not None
        return _common.udocker_argv(setup.udocker, *words)

    _common.checked(udocker("pull", f"--registry={setup.registry_url}", IMAGE), env, "pull")
    if scenario == "udocker-run":
        _common.checked(udocker("create", f"--name={NAME}", IMAGE), env, "udocker create")
        _common.checked(udocker("setup", "--execmode=P1", NAME), env, "udocker setup")
        command = udocker("run", NAME, "/bin/true")
        expected = 1
    else:
        command = udocker("run", IMAGE, "/bin/true")
        expected = tasks
    result = together([command] * tasks, env, args.timeout)
    result.scenario = scenario
    listing = subprocess.run(udocker("ps"), env=env, capture_output=True, text=True, check=False)
    containers = max(0, len(listing.stdout.strip().splitlines()) - 1)  # less the heading
    verify = subprocess.run(
        udocker("verify", IMAGE), env=env, capture_output=True, text=True, check=False
    )
    if verify.returncode != 0:
        result.check = f"udocker verify failed: {_common.last_line(verify.stdout + verify.stderr)}"
    elif containers != expected:
        result.check = f"{containers} containers, not {expected}"
    return result


def prepare(args: argparse.Namespace, registry: object) -> Setup:
    """Untimed: push the busybox image, install udocker, write the proot wrapper."""
    _common.ucore_import_path()
    from ucore.testing.images import busybox_image
    from ucore.testing.push import Pusher

    url = registry.url  # type: ignore[attr-defined]
    address = registry.address  # type: ignore[attr-defined]
    Pusher(url).push(IMAGE, busybox_image())
    python = str(_common.ensure_ucore_venv()) if args.ucore_venv else args.python
    if not args.ucore_venv:
        _common.compile_sources(python)
    udocker = None
    if any(s.startswith("udocker") for s in args.scenarios):
        udocker = _common.ensure_udocker()
    setup = Setup([python, "-m", "ucore", "-q"], udocker, f"{address}/{IMAGE}", url)
    setup.base = {k: v for k, v in os.environ.items() if not k.startswith(("UCORE_", "UDOCKER_"))}
    return setup


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tasks", default="16,64", help="comma-separated task counts")
    parser.add_argument("--runs", type=int, default=3, help="counted rounds per scenario")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {SCENARIOS}"
    )
    parser.add_argument("--store-dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs ucore")
    parser.add_argument(
        "--ucore-venv", action="store_true", help="run ucore from a clean venv (as installed)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per round")
    parser.add_argument("--json", type=Path, help="also write every round here")
    args = parser.parse_args(argv)
    args.tasks = [int(n) for n in args.tasks.split(",") if n.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown or args.runs < 1 or not args.tasks or min(args.tasks) < 1:
        parser.error(f"bad --scenarios {sorted(unknown)}, --runs or --tasks")
    return args


def report(rounds: list[Round], args: argparse.Namespace) -> None:
    print(f"\n{'scenario':<16} {'tasks':>5} {'median s':>9} {'per task ms':>11}  ok/rounds  notes")
    medians: dict[tuple[str, int], float] = {}
    for tasks in args.tasks:
        for scenario in args.scenarios:
            mine = [r for r in rounds if r.scenario == scenario and r.tasks == tasks]
            good = [r.seconds for r in mine if r.ok]
            notes = "; ".join(
                sorted(
                    {
                        r.check or f"{r.failed} tasks failed ({r.first_error})"
                        for r in mine
                        if not r.ok
                    }
                )
            )
            if good:
                medians[(scenario, tasks)] = median = statistics.median(good)
                row = f"{median:>9.2f} {median / tasks * 1000:>11.1f}"
            else:
                row = f"{'-':>9} {'-':>11}"
            print(f"{scenario:<16} {tasks:>5} {row}  {len(good)}/{len(mine):<7}  {notes}")
    print()
    for tasks in args.tasks:
        for ours, theirs in (("ucore-create", "udocker-create"), ("ucore-run", "udocker-run")):
            a, b = medians.get((ours, tasks)), medians.get((theirs, tasks))
            if a and b:
                print(f"{tasks:>3} tasks: {ours} / {theirs} = {a / b:.2f}x")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    print(f"load      {_common.load_average()} (1/5/15 min); {os.cpu_count()} CPUs")
    print(f"stores    {args.store_dir} ({_common.filesystem_type(args.store_dir)})")
    registry = _image.start_registry()
    rounds: list[Round] = []
    try:
        setup = prepare(args, registry)
        wrapper_dir = Path(tempfile.mkdtemp(prefix="ucore-scale-", dir=args.store_dir))
        try:
            setup.proot_wrapper = _common.write_proot_wrapper(wrapper_dir / "proot-no-k")
            for tasks in args.tasks:
                for run in range(args.runs):
                    for scenario in args.scenarios:  # interleaved: load drifts hit all alike
                        place = Path(tempfile.mkdtemp(prefix="round-", dir=wrapper_dir))
                        try:
                            go = ucore_round if scenario.startswith("ucore") else udocker_round
                            result = go(scenario, tasks, setup, place, args)
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            result = Round(scenario, tasks, 0.0, tasks, check=str(exc))
                        finally:
                            shutil.rmtree(place, ignore_errors=True)
                        rounds.append(result)
                        state = (
                            "ok" if result.ok else f"FAILED: {result.check or result.first_error}"
                        )
                        line = f"{scenario:<16} {tasks:>3} tasks, round {run + 1}:"
                        print(f"{line} {result.seconds:6.2f} s {state}")
        finally:
            shutil.rmtree(wrapper_dir, ignore_errors=True)
    finally:
        registry.stop()
    report(rounds, args)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rounds], indent=1))
    return 0 if all(r.ok for r in rounds if r.scenario.startswith("ucore")) else 1


if __name__ == "__main__":
    sys.exit(main())
