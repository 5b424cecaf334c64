"""Shared machinery of the benches: alternating runs, /usr/bin/time -v, medians and ratios.

The machines these benches run on are small shared virtual machines: one run's disk write-back
or a neighbour's load lands on whatever runs next. So every scenario runs its commands in turn
(A B C A B C ...), each in a fresh directory, drops warm-up rounds, and reports medians, min/max
and ratios of medians rather than single times. Wall time comes from Python's monotonic
``time.perf_counter``; peak memory from GNU ``/usr/bin/time -v`` ("Maximum resident set size"),
a public tool present on every Debian machine (package ``time``).

A scenario (``pull.py``, ``create.py``, ``run.py``) defines :class:`Case` subclasses and hands
them to :func:`alternate`, then prints with :func:`print_table` and :func:`print_ratio`. The
tools every scenario runs are set up here too: ucore's environment (an uninstalled checkout),
udocker from PyPI in a venv under the cache, and the proot wrapper udocker needs on Debian.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

GNU_TIME = "/usr/bin/time"
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
UCORE_SOURCE = REPO_ROOT / "core" / "src"
UDOCKER_VERSION = "1.3.17"
UDOCKER_VENV = CACHE_DIR / "udocker-venv"
UCORE_VENV = CACHE_DIR / "ucore-venv"
# The distributions a clean ucore venv holds: the core, the PRoot engine (P1, P2) and the runc
# and crun engines (R1).
UCORE_VENV_DISTS = (
    REPO_ROOT / "core",
    REPO_ROOT / "plugins" / "proot",
    REPO_ROOT / "plugins" / "runc",
    REPO_ROOT / "plugins" / "gpu",
)


@dataclass(frozen=True)
class Invocation:
    """One command to time: argv, its whole environment, and where it runs."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Optional[Path] = None


@dataclass
class RunResult:
    """What one timed command did: wall seconds, exit status, peak RSS, its output."""

    seconds: float
    returncode: int
    max_rss_kb: Optional[int]
    stdout: str
    stderr: str
    timed_out: bool = False


@dataclass
class Sample:
    """One run of one case in one round, as stored in the results."""

    case: str
    round: int
    warmup: bool
    seconds: float
    max_rss_kb: Optional[int]
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Case:
    """A command under test. Subclasses say how to run it in a fresh directory and check it.

    ``name`` labels the column; ``prepare`` may create files in ``workdir`` (outside the timing)
    and returns the command; ``verify`` looks at the result (and at ``workdir``) and returns an
    error message when the command did not really do its job, e.g. exited 0 having stored
    nothing.
    """

    name = "case"
    #: Exit statuses that mean the command ran (``verify`` may still find it did not).
    ok_status: tuple[int, ...] = (0,)

    def prepare(self, workdir: Path) -> Invocation:
        raise NotImplementedError

    def verify(self, workdir: Path, result: RunResult) -> Optional[str]:
        return None

    def cleanup(self, workdir: Path, result: RunResult) -> None:
        """Undoes a run's lasting effects outside ``workdir`` (untimed), e.g. removes the
        container a create made in a store that lives on from round to round."""


class CommandCase(Case):
    """A fixed command with a fixed environment: nothing to prepare, exit 0 is success."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env

    def prepare(self, workdir: Path) -> Invocation:
        return Invocation(self.argv, self.env)


def parse_time_v(text: str) -> dict[str, str]:
    """``/usr/bin/time -v`` report as {field: value}, e.g. "Maximum resident set size (kbytes)".

    The elapsed-time field has colons in both its name and value, so lines are split at the
    last ": ".
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().rpartition(": ")
        if sep:
            fields[key] = value.strip()
    return fields


def max_rss_kb(fields: Mapping[str, str]) -> Optional[int]:
    value = fields.get("Maximum resident set size (kbytes)")
    return int(value) if value and value.isdigit() else None


def timed_run(invocation: Invocation, timeout: float) -> RunResult:
    """Runs the command under ``/usr/bin/time -v``; wall time is Python's, around the process.

    The command gets its own session so that a timeout kills its whole process tree (not only
    ``time``). Output goes to files, not pipes, so that reading it costs the command nothing.
    The wait blocks (a timer thread enforces the timeout), so the time is not rounded up.
    """
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        report = Path(tmp) / "time.txt"
        out_path = Path(tmp) / "stdout"
        err_path = Path(tmp) / "stderr"
        argv = [GNU_TIME, "-v", "-o", str(report), *invocation.argv]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                env=dict(invocation.env),
                cwd=invocation.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            expired = threading.Event()

            def kill() -> None:
                if proc.returncode is not None:  # already reaped: its id may be reused
                    return
                expired.set()
                with contextlib.suppress(ProcessLookupError):  # it ended as the timer fired
                    os.killpg(proc.pid, signal.SIGKILL)

            # A blocking wait returns as soon as the command ends: ``Popen.wait(timeout)``
            # polls with sleeps growing to 50 ms, which would round short runs up by as much.
            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                returncode = proc.wait()
            finally:
                timer.cancel()
            seconds = time.perf_counter() - started
            timed_out = expired.is_set()
        fields = parse_time_v(report.read_text(errors="replace")) if report.exists() else {}
        return RunResult(
            seconds=seconds,
            returncode=returncode,
            max_rss_kb=max_rss_kb(fields),
            stdout=out_path.read_text(errors="replace"),
            stderr=err_path.read_text(errors="replace"),
            timed_out=timed_out,
        )


def last_line(text: str) -> str:
    """The last non-empty line of some output: usually the error message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def alternate(
    cases: Sequence[Case],
    *,
    rounds: int,
    warmup: int,
    workroot: Path,
    timeout: float,
    between: Optional[Callable[[], None]] = None,
    log: Callable[[str], None] = print,
    compact: bool = False,
) -> list[Sample]:
    """Runs every case once per round, in turn, each in a fresh ``workroot/NAME`` directory.

    ``between`` runs before each timed command (outside the timing), e.g. ``os.sync`` so that
    one run's write-back does not land in the next one. A case that fails is not run again: a
    broken command has no speed, and the other cases still get their rounds. After each run,
    ``Case.cleanup`` undoes its effects outside ``workdir`` (untimed). ``compact`` logs one line
    per round (every case's seconds) instead of one per run: for many short runs.
    """
    samples: list[Sample] = []
    failed: set[str] = set()
    total = warmup + rounds
    for number in range(total):
        label = "warm-up" if number < warmup else f"round {number - warmup + 1}/{rounds}"
        line: list[str] = []
        for case in cases:
            if case.name in failed:
                continue
            workdir = fresh_dir(workroot / case.name)
            try:
                invocation = case.prepare(workdir)
            except (OSError, RuntimeError, ValueError) as exc:  # reported like a failed run
                samples.append(Sample(case.name, number, number < warmup, 0.0, None, str(exc)))
                failed.add(case.name)
                log(f"  {label:>12}  {case.name:<10} setup failed: {exc}")
                continue
            if between is not None:
                between()
            result = timed_run(invocation, timeout)
            error: Optional[str]
            if result.timed_out:
                error = f"timed out after {timeout:.0f} s"
            elif result.returncode not in case.ok_status:
                message = last_line(result.stderr) or last_line(result.stdout)
                error = f"exit {result.returncode}: {message}"
            else:
                error = case.verify(workdir, result)
            sample = Sample(
                case.name, number, number < warmup, result.seconds, result.max_rss_kb, error
            )
            samples.append(sample)
            try:
                case.cleanup(workdir, result)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            rss = f"{result.max_rss_kb / 1024:7.1f} MB" if result.max_rss_kb else "      ? MB"
            status = "" if error is None else f"  FAILED {error}"
            if compact and error is None:
                line.append(f"{case.name} {result.seconds:.3f}")
            else:
                log(f"  {label:>12}  {case.name:<10} {result.seconds:7.3f} s {rss}{status}")
            if error is not None:
                failed.add(case.name)
        if compact and line:
            log(f"  {label:>12}  {'  '.join(line)}")
    return samples


@dataclass
class Stats:
    """Summary of one case's counted runs (warm-ups excluded); ``error`` if any run failed."""

    name: str
    runs: int
    median: Optional[float] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    peak_rss_kb: Optional[int] = None
    error: Optional[str] = None
    times: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.median is not None


def summarize(samples: Sequence[Sample], name: str) -> Stats:
    """Median, min and max of the counted runs; peak RSS is the largest seen in them."""
    mine = [sample for sample in samples if sample.case == name]
    errors = [sample for sample in mine if not sample.ok]
    counted = [sample for sample in mine if not sample.warmup and sample.ok]
    stats = Stats(name, len(counted))
    if errors:
        first = errors[0]
        where = "warm-up" if first.warmup else f"round {first.round + 1}"
        stats.error = f"{where}: {first.error}"
    if counted:
        times = [sample.seconds for sample in counted]
        stats.times = times
        stats.median = statistics.median(times)
        stats.minimum = min(times)
        stats.maximum = max(times)
        rss = [sample.max_rss_kb for sample in counted if sample.max_rss_kb is not None]
        stats.peak_rss_kb = max(rss) if rss else None
    elif not errors:
        stats.error = "no counted runs"
    return stats


def ratio(numerator: Stats, denominator: Stats) -> Optional[float]:
    """Ratio of medians, or None when either side has no valid median."""
    if not (numerator.ok and denominator.ok) or not denominator.median:
        return None
    assert numerator.median is not None
    return numerator.median / denominator.median


def print_table(stats: Sequence[Stats], megabytes: Optional[float] = None) -> None:
    """One line per case: median, min, max, peak RSS (and MB/s when a size is given)."""
    rate_head = "  median MB/s" if megabytes else ""
    width = max([10, *(len(item.name) for item in stats)])
    print(
        f"{'tool':<{width}} {'runs':>4} {'median s':>9} {'min s':>8} {'max s':>8} {'peak RSS':>10}"
        f"{rate_head}"
    )
    for item in stats:
        if not item.ok:
            print(f"{item.name:<{width}} {item.runs:>4}  FAILED ({item.error})")
            continue
        assert item.median is not None and item.minimum is not None and item.maximum is not None
        rss = f"{item.peak_rss_kb / 1024:7.1f} MB" if item.peak_rss_kb else f"{'?':>10}"
        rate = f"  {megabytes / item.median:11.0f}" if megabytes else ""
        print(
            f"{item.name:<{width}} {item.runs:>4} {item.median:9.3f} {item.minimum:8.3f}"
            f" {item.maximum:8.3f} {rss:>10}{rate}"
        )


def print_ratio(numerator: Stats, denominator: Stats, target: Optional[float] = None) -> None:
    """``a/b median ratio: 0.62x`` with a PASS/FAIL against ``target`` (a maximum) if given."""
    value = ratio(numerator, denominator)
    label = f"{numerator.name}/{denominator.name}"
    if value is None:
        missing = numerator if not numerator.ok else denominator
        print(f"{label:<18} n/a ({missing.name} has no valid median)")
        return
    verdict = ""
    if target is not None:
        verdict = f"   target <= {target:.2f}x: {'PASS' if value <= target else 'FAIL'}"
    print(f"{label:<18} {value:6.2f}x{verdict}")


def write_json(
    path: Path, meta: Mapping[str, object], samples: Sequence[Sample], stats: Sequence[Stats]
) -> None:
    """Raw samples and summaries, for comparing machines or commits later."""
    data = {
        "meta": dict(meta),
        "samples": [asdict(sample) for sample in samples],
        "stats": [asdict(item) for item in stats],
    }
    path.write_text(json.dumps(data, indent=1))


def command_version(argv: Sequence[str]) -> str:
    """First line a ``--version`` style command prints, for the report header."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "?"


def filesystem_type(path: Path) -> str:
    """Type of the filesystem holding ``path`` (tmpfs vs ext4 ...), from /proc/self/mounts."""
    best, kind = "", "?"
    resolved = str(path.resolve())
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def python_info() -> str:
    return f"Python {sys.version.split()[0]}"


def parse_env(pairs: Sequence[str], option: str = "--ucore-env") -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} wants KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def ucore_env(
    base: Mapping[str, str],
    store: Path,
    extra: Optional[Mapping[str, str]] = None,
    installed: bool = False,
) -> dict[str, str]:
    """Environment for ``{python} -m ucore``: ``UCORE_DIR`` the store, then ``extra``. Unless
    ucore is ``installed`` in the interpreter's venv (:func:`ensure_ucore_venv`), the
    checkout's ``core/src`` goes first on ``PYTHONPATH`` (no install needed)."""
    env = dict(base)
    if not installed:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(UCORE_SOURCE), env.get("PYTHONPATH")])
        )
    env["UCORE_DIR"] = str(store)
    env.update(extra or {})
    return env


def compile_sources(python: str) -> None:
    """Byte-compiles the checkout's sources for the interpreter that will run them, before
    anything is timed. With ``PYTHONDONTWRITEBYTECODE`` set (tox and many CI images set it)
    nothing writes ``__pycache__``, so every timed ucore run would compile each module edited
    since the last write from source, and look slower than an installed ucore is."""
    sources = [UCORE_SOURCE, *sorted((REPO_ROOT / "plugins").glob("*/src"))]
    subprocess.run(
        [python, "-m", "compileall", "-q", *map(str, sources)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def ucore_import_path() -> None:
    """Makes ``import ucore`` work from an uninstalled checkout (for ``ucore.testing``)."""
    try:
        import ucore  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(UCORE_SOURCE))


def ensure_udocker(venv: Path = UDOCKER_VENV) -> Path:
    """udocker from PyPI in a venv under the cache, installed on first use."""
    executable = venv / "bin" / "udocker"
    if not executable.exists():
        print(f"installing udocker=={UDOCKER_VERSION} into {venv} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", f"udocker=={UDOCKER_VERSION}"],
            check=True,
        )
    return executable


def source_copies(place: Path, dists: Sequence[Path]) -> list[str]:
    """Copies of the distributions' sources under ``place``, for pip to build from: building
    in the checkout would leave ``build/`` and ``*.egg-info`` there."""
    copies = []
    for dist in dists:
        copy = place / dist.name
        copy.mkdir()
        for item in ("pyproject.toml", "README.md", "src"):
            if (dist / item).is_dir():
                shutil.copytree(
                    dist / item,
                    copy / item,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                )
            elif (dist / item).exists():
                shutil.copy2(dist / item, copy / item)
        copies.append(str(copy))
    return copies


def ensure_ucore_venv(venv: Path = UCORE_VENV) -> Path:
    """A venv holding this checkout's ucore and PRoot plugin, installed as a user installs
    them; its python.

    udocker runs from a venv of its own, where interpreter start-up is as cheap as Python
    makes it; the interpreter ucore runs with may have ``.pth`` files in its site-packages
    that import modules at every start, and sources on ``PYTHONPATH`` come before the standard
    library, so every import would look there first. So the venv and the dependencies are
    built once, and the two distributions are reinstalled at every call from a copy of the
    checkout (nothing is written into it), byte-compiled by pip as for any user.
    """
    python = venv / "bin" / "python"
    fresh = not python.exists()
    if fresh:
        print(f"building a clean ucore venv in {venv} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with tempfile.TemporaryDirectory(prefix="ucore-venv-src-") as tmp:
        copies = source_copies(Path(tmp), UCORE_VENV_DISTS)
        install = [str(python), "-m", "pip", "install", "--quiet", "--force-reinstall"]
        try:
            subprocess.run([*install, *([] if fresh else ["--no-deps"]), *copies], check=True)
        except BaseException:
            if fresh:
                shutil.rmtree(venv, ignore_errors=True)
            raise
    return python


def udocker_argv(executable: Path, *args: str) -> list[str]:
    """``udocker [--allow-root] ARGS``: udocker refuses to run as root without the flag."""
    argv = [str(executable)]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    return [*argv, *args]


def udocker_env(
    base: Mapping[str, str], store: Path, proot: Optional[Path] = None
) -> dict[str, str]:
    """udocker with its store at ``store``, no tools tarball (nothing downloaded), and the
    system's (or the given) proot instead of its own."""
    env = dict(base)
    env.update(
        {
            "UDOCKER_DIR": str(store),
            "UDOCKER_TARBALL": "",
            "UDOCKER_USE_PROOT_EXECUTABLE": str(proot or shutil.which("proot") or "/usr/bin/proot"),
        }
    )
    return env


# udocker always passes ``-k <host kernel release>`` to proot; Debian's proot 5.1.0 then breaks
# every glibc 2.33+ binary ("cannot stat shared object"). This wrapper drops the pair.
PROOT_WRAPPER = """#!/bin/sh
# proot without udocker's "-k RELEASE" (breaks glibc 2.33+ under Debian's proot 5.1.0)
skip=0
for arg do
    shift
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    if [ "$arg" = -k ]; then skip=1; continue; fi
    set -- "$@" "$arg"
done
exec {proot} "$@"
"""


def write_proot_wrapper(path: Path, proot: str = "/usr/bin/proot") -> Path:
    """Writes the ``-k``-dropping proot wrapper (see :data:`PROOT_WRAPPER`) at ``path``."""
    path.write_text(PROOT_WRAPPER.format(proot=proot))
    path.chmod(0o755)
    return path


def checked(argv: Sequence[str], env: Mapping[str, str], what: str, timeout: float = 600) -> str:
    """Runs an untimed setup command; its stdout, or RuntimeError with its last output line."""
    proc = subprocess.run(
        list(argv), env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        message = last_line(proc.stderr) or last_line(proc.stdout)
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {message}")
    return proc.stdout


def print_check(label: str, text: str, ok: Optional[bool]) -> None:
    """``label   text: PASS|FAIL``; just ``label   text`` when ``ok`` is None (no figure)."""
    verdict = "" if ok is None else (": PASS" if ok else ": FAIL")
    print(f"{label:<18} {text}{verdict}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: figures taken under load are noisy."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- command lines --------------------------------------------------------------------------


def bench_parser(
    description: str,
    *,
    runs: int,
    warmup: int,
    tools: Sequence[str],
    tools_help: str,
    ucore_cmd: str,
    ucore_fields: str,
) -> argparse.ArgumentParser:
    """The options every benchmark shares: rounds, tools, ucore's command and environment,
    JSON output."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=runs, help="counted rounds")
    parser.add_argument("--warmup", type=int, default=warmup, help="uncounted rounds first")
    parser.add_argument(
        "--tools",
        default=",".join(tools),
        help=f"comma-separated, run in this order each round: {tools_help}",
    )
    parser.add_argument(
        "--ucore-cmd", default=ucore_cmd, help=f"ucore's command; fields {ucore_fields}"
    )
    parser.add_argument(
        "--ucore-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for ucore (repeatable), e.g. UCORE_JOBS=8",
    )
    parser.add_argument("--json", type=Path, help="also write raw samples and stats here")
    return parser


def add_big_image_options(parser: argparse.ArgumentParser, timeout: float) -> None:
    """Options of the benchmarks that use the big image and write to disk."""
    parser.add_argument("--layers", type=int, default=10, help="layers in the big image")
    parser.add_argument("--size-mb", type=int, default=500, help="gzip size of the big image")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached image")
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per command")
    parser.add_argument(
        "--no-sync",
        action="store_true",
        help="do not call sync before each run (by default one run's write-back is flushed"
        " before the next starts)",
    )


def parse_checked(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], known: Sequence[str]
) -> argparse.Namespace:
    """Parse, split ``--tools`` and refuse unknown tools or impossible round counts."""
    args = parser.parse_args(argv)
    args.tools = [tool.strip() for tool in args.tools.split(",") if tool.strip()]
    unknown = set(args.tools) - set(known)
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    return args
