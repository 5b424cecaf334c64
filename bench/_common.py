"""Shared machinery of the benches: alternating runs, /usr/bin/time -v, medians and ratios.

The machines these benches run on are small shared virtual machines: one run's disk write-back
or a neighbour's load lands on whatever runs next. So every scenario runs its commands in turn
(A B C A B C ...), each in a fresh directory, drops warm-up rounds, and reports medians, min/max
and ratios of medians rather than single times. Wall time comes from Python's monotonic
``time.perf_counter``; peak memory from GNU ``/usr/bin/time -v`` ("Maximum resident set size"),
a public tool present on every Debian machine (package ``time``).

A scenario (``pull.py``, later create/run latency) defines :class:`Case` subclasses and hands
them to :func:`alternate`, then prints with :func:`print_table` and :func:`print_ratio`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

GNU_TIME = "/usr/bin/time"


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

    def prepare(self, workdir: Path) -> Invocation:
        raise NotImplementedError

    def verify(self, workdir: Path, result: RunResult) -> Optional[str]:
        return None


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
    """
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        report = Path(tmp) / "time.txt"
        out_path = Path(tmp) / "stdout"
        err_path = Path(tmp) / "stderr"
        argv = [GNU_TIME, "-v", "-o", str(report), *invocation.argv]
        timed_out = False
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
            try:
                returncode = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
            seconds = time.perf_counter() - started
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
) -> list[Sample]:
    """Runs every case once per round, in turn, each in a fresh ``workroot/NAME`` directory.

    ``between`` runs before each timed command (outside the timing), e.g. ``os.sync`` so that
    one run's write-back does not land in the next one. A case that fails is not run again: a
    broken command has no speed, and the other cases still get their rounds.
    """
    samples: list[Sample] = []
    failed: set[str] = set()
    total = warmup + rounds
    for number in range(total):
        label = "warm-up" if number < warmup else f"round {number - warmup + 1}/{rounds}"
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
            elif result.returncode != 0:
                message = last_line(result.stderr) or last_line(result.stdout)
                error = f"exit {result.returncode}: {message}"
            else:
                error = case.verify(workdir, result)
            sample = Sample(
                case.name, number, number < warmup, result.seconds, result.max_rss_kb, error
            )
            samples.append(sample)
            shutil.rmtree(workdir, ignore_errors=True)
            rss = f"{result.max_rss_kb / 1024:7.1f} MB" if result.max_rss_kb else "      ? MB"
            status = "" if error is None else f"  FAILED {error}"
            log(f"  {label:>12}  {case.name:<10} {result.seconds:7.3f} s {rss}{status}")
            if error is not None:
                failed.add(case.name)
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
    print(
        f"{'tool':<10} {'runs':>4} {'median s':>9} {'min s':>8} {'max s':>8} {'peak RSS':>10}"
        f"{rate_head}"
    )
    for item in stats:
        if not item.ok:
            print(f"{item.name:<10} {item.runs:>4}  FAILED ({item.error})")
            continue
        assert item.median is not None and item.minimum is not None and item.maximum is not None
        rss = f"{item.peak_rss_kb / 1024:7.1f} MB" if item.peak_rss_kb else f"{'?':>10}"
        rate = f"  {megabytes / item.median:11.0f}" if megabytes else ""
        print(
            f"{item.name:<10} {item.runs:>4} {item.median:9.3f} {item.minimum:8.3f}"
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
