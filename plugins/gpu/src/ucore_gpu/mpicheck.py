"""``ucore mpi check IMAGE|CONTAINER``: will this image's MPI work with this host's launcher?

A job that starts ranks which cannot find each other wastes its allocation: each rank comes up
as a singleton ("rank 0 of 1") or the job hangs in its wire-up. The check compares, before any
job, the host's side (its MPI library, its ``mpirun``, the PMI plugins ``srun --mpi=list``
offers, its PMIx) with the image's (its MPI library's flavour, version and soname, the
process-management interfaces it speaks, its glibc), read from files only, and says in plain
words what will happen with the launcher the job will use:

* ``mpirun`` (the host's): the image's MPI must be the same implementation (Open MPI's
  launcher speaks ORTE/PRRTE, MPICH's Hydra its own PMI), and for Open MPI the same major
  release; a minor release apart is reported as a risk.
* ``srun``: the image's MPI must speak one of the PMI flavours this Slurm offers; the check
  names the ``--mpi=`` to use.

It also says whether ``run --mpi=host`` would bind the host's MPI into the image.

Exit status: 0 when the launcher can start the image's ranks, 9 when it cannot (the same
status a refused ``--mpi=host`` run has); 2 for bad usage, 3 for an image or container that
is not in the store.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

from ucore_gpu import mpibind, mpiinfo
from ucore_gpu.mpiinfo import Side

#: ``mpi check`` found the launcher cannot start the image's ranks.
INCOMPATIBLE = 9
LAUNCHERS = ("mpirun", "srun")
#: How long ``srun --mpi=list`` may take (it asks no controller, but a broken Slurm
#: configuration can make it wait on DNS).
SRUN_TIMEOUT = 20.0
#: PMI flavours in the order ``srun --mpi=`` should prefer them.
_PREFERRED = ("pmix", "pmi2", "pmi1")


class Launchers(NamedTuple):
    """The host's MPI launchers."""

    mpirun: Optional[str]
    srun: Optional[str]
    #: What ``srun --mpi=list`` offers (``pmix``, ``pmi2``, ...).
    srun_mpi: tuple[str, ...] = ()
    #: Why ``srun --mpi=list`` gave nothing: its first error line.
    srun_error: Optional[str] = None


class Verdict(NamedTuple):
    launcher: str
    compatible: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    #: Why ``run --mpi=host`` would be refused; None when it would bind.
    bind_refusal: Optional[str]


def launchers(path: Optional[str] = None) -> Launchers:
    """The ``mpirun`` and ``srun`` on ``PATH``, and the PMI plugins this Slurm offers."""
    mpirun = shutil.which("mpirun", path=path)
    srun = shutil.which("srun", path=path)
    if srun is None:
        return Launchers(mpirun, None)
    offered, error = srun_plugins(srun)
    return Launchers(mpirun, srun, offered, error)


def srun_plugins(srun: str) -> tuple[tuple[str, ...], Optional[str]]:
    """``srun --mpi=list``'s plugin types (``pmix_v4`` counts as ``pmix``), or its error."""
    try:
        done = subprocess.run(
            [srun, "--mpi=list"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=SRUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return (), f"srun --mpi=list did not answer within {SRUN_TIMEOUT:.0f} s"
    except OSError as exc:
        return (), f"srun --mpi=list: {exc.strerror}"
    offered = parse_mpi_list(done.stdout + "\n" + done.stderr)
    if done.returncode != 0 or not offered:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        fatal = [ln for ln in lines if "fatal" in ln] or lines
        return (), fatal[-1] if fatal else f"srun --mpi=list: exit status {done.returncode}"
    return offered, None


def parse_mpi_list(text: str) -> tuple[str, ...]:
    """Plugin types from ``srun --mpi=list`` output: Slurm 22 prints ``MPI plugin types
    are...`` then one per line; older ones ``srun: mpi/pmix``."""
    found: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("srun: mpi/"):
            line = line[len("srun: mpi/") :]
        elif line.startswith("specific pmix plugin versions available:"):
            line = line.split(":", 1)[1]
        for token in line.replace(",", " ").split():
            if re.fullmatch(r"pmix(_v\d+)?|pmi2|pmi1|none|cray_shasta", token):
                name = "pmix" if token.startswith("pmix") else token
                if name not in found:
                    found.append(name)
    return tuple(found)


def default_launcher(found: Launchers, environ: Mapping[str, str]) -> str:
    """``srun`` inside a Slurm allocation (or with no ``mpirun``), else ``mpirun``."""
    if found.srun and ("SLURM_JOB_ID" in environ or not found.mpirun):
        return "srun"
    return "mpirun"


def compare(host: Side, found: Launchers, image: Side, launcher: str) -> Verdict:
    problems: list[str] = []
    notes: list[str] = []
    if image.mpi is None:
        problems.append(
            "the image has no MPI library (no libmpi.so or libmpich.so through its"
            " ld.so.cache or library directories): its programs cannot join an MPI job"
        )
    elif launcher == "mpirun":
        _with_mpirun(host, found, image, problems, notes)
    else:
        _with_srun(host, found, image, problems, notes)
    return Verdict(
        launcher, not problems, tuple(problems), tuple(notes), mpibind.refusal(host, image)
    )


def _with_mpirun(
    host: Side, found: Launchers, image: Side, problems: list[str], notes: list[str]
) -> None:
    assert image.mpi is not None
    if found.mpirun is None or host.mpi is None:
        what = "no mpirun on PATH" if found.mpirun is None else "no MPI library"
        problems.append(f"the host has {what}: no host launcher to start the image's ranks")
        return
    h, i = host.mpi, image.mpi
    if h.family != i.family:
        problems.append(
            f"the image has {i.describe()}; the host launcher is {h.describe()}:"
            " ranks will start as singletons (each one rank of 1)"
        )
        return
    if h.flavour != i.flavour:
        notes.append(
            f"the image has {i.describe()} and the host {h.describe()}: the same ABI, but"
            " their launchers differ; run the image's ranks with the host's own launcher"
        )
    hs, is_ = h.series(), i.series()
    if hs is None or is_ is None:
        notes.append("a version is unknown, so the releases could not be compared")
    elif h.flavour == "Open MPI" and hs[0] != is_[0]:
        problems.append(
            f"the image has {i.describe()}; the host launcher is {h.describe()}: Open MPI's"
            " launcher and its ranks must be the same major release, or the wire-up fails"
        )
    elif hs != is_:
        notes.append(
            f"the host launcher is {h.describe()} and the image has {i.describe()}: releases"
            " apart are not guaranteed to interoperate"
        )


def _with_srun(
    host: Side, found: Launchers, image: Side, problems: list[str], notes: list[str]
) -> None:
    assert image.mpi is not None
    i = image.mpi
    if found.srun is None:
        problems.append("the host has no srun on PATH")
        return
    if found.srun_error is not None:
        problems.append(f"srun cannot say which PMI it offers: {found.srun_error}")
        return
    common = [p for p in _PREFERRED if p in i.pmi and p in found.srun_mpi]
    if not common:
        speaks = ", ".join(i.pmi) or "no PMI this check recognises"
        problems.append(
            f"the image's {i.describe()} speaks {speaks}; this Slurm offers"
            f" {', '.join(found.srun_mpi) or 'none'}: ranks will start as singletons"
        )
        return
    notes.append(f"start the ranks with srun --mpi={common[0]}")
    majors = {mpiinfo.version_key(v)[:1] for v in (host.pmix, image.pmix) if v}
    if common[0] == "pmix" and len(majors) > 1:
        notes.append(
            f"PMIx {host.pmix} on the host and {image.pmix} in the image: PMIx talks across"
            " releases from 2.1 on"
        )


def describe_side(side: Side) -> dict[str, Any]:
    mpi = side.mpi
    return {
        "mpi": None
        if mpi is None
        else {
            "flavour": mpi.flavour,
            "version": mpi.version,
            "soname": mpi.soname,
            "path": mpi.library.path,
            "pmi": list(mpi.pmi),
        },
        "pmix": side.pmix,
        "glibc": side.glibc,
    }


def report(host: Side, found: Launchers, image: Side, verdict: Verdict) -> dict[str, Any]:
    """The check as JSON-able data (``--json``)."""
    return {
        "host": {
            **describe_side(host),
            "mpirun": found.mpirun,
            "srun": found.srun,
            "srun_mpi": list(found.srun_mpi),
            "srun_error": found.srun_error,
        },
        "image": describe_side(image),
        "launcher": verdict.launcher,
        "compatible": verdict.compatible,
        "problems": list(verdict.problems),
        "notes": list(verdict.notes),
        "host_bind": {"possible": verdict.bind_refusal is None, "refusal": verdict.bind_refusal},
    }


def lines(host: Side, found: Launchers, image: Side, verdict: Verdict) -> list[str]:
    """The check in words, for a terminal or a job log."""

    def mpi_text(side: Side) -> str:
        if side.mpi is None:
            return "no MPI library"
        pmi = ", ".join(side.mpi.pmi) or "no known PMI"
        return f"{side.mpi.describe()} at {side.mpi.library.path} (PMI: {pmi})"

    if found.srun is None:
        srun = "no srun"
    elif found.srun_error:
        srun = f"srun unusable ({found.srun_error})"
    else:
        srun = f"srun --mpi={'|'.join(found.srun_mpi)}"
    out = [
        f"host:  {mpi_text(host)}; PMIx {host.pmix or 'none'};"
        f" {found.mpirun or 'no mpirun'}; {srun}",
        f"image: {mpi_text(image)}; PMIx {image.pmix or 'none'}; glibc {image.glibc or 'none'}",
    ]
    state = "compatible" if verdict.compatible else "INCOMPATIBLE"
    out.append(f"with {verdict.launcher}: {state}")
    out += [f"  problem: {p}" for p in verdict.problems]
    out += [f"  note: {n}" for n in verdict.notes]
    bind = verdict.bind_refusal
    out.append(
        f"run --mpi=host: {'would bind the host MPI' if bind is None else 'refused: ' + bind}"
    )
    return out
