#!/usr/bin/env python3
"""Run latency benchmark: ``ucore run C /bin/true`` against ``udocker run`` and the runtimes
themselves, for the PRoot engine (P1) and for the OCI runtimes runc (R1) and crun.

Every command runs ``/bin/true`` in a container made from a small busybox image (static
busybox, so it runs under any proot whatever the host's glibc; see ``ucore.testing.images``),
many times, in turn. PRoot: ucore (P1), udocker (P1, with the system proot behind a wrapper that
drops udocker's ``-k``, see below), and ``proot -r ROOT /bin/true`` directly on the ucore
container's root. OCI runtimes: ucore with the runc and the crun engine, udocker in R1 mode (the
system runc), and ``runc run`` / ``crun run`` directly with the configuration ucore's plugin
generates for the same root. What a tool adds to a container's start is its median minus the
median of the runtime it drives. For context the bench also times ``python -c pass`` (the
interpreter's start), ``python -m ucore version`` (ucore's command line starting and loading its
plugins) and ``python -c pass`` with udocker's venv interpreter (which may start faster: no
``.pth`` files of the host's site-packages). ``--ucore-venv`` runs ucore from a clean venv too.

The Fakechroot engines (F1, F3) need a glibc root, so their rows (and ``ucore-deb``,
``ucore-crun-deb``, ``udocker-f1`` and the ``fakechroot`` floor, to compare on the same image) run
``/bin/true`` in containers of a Debian bookworm minbase image (``tests/support/debian.py``).
``--heavy`` adds two system-call-heavy workloads on those containers, against the host running
the same command with its own coreutils/findutils: 50,000 small ``dd`` reads and writes, and
GNU ``find`` over a bound directory.

Targets (from the issues): ucore's overhead over direct proot at most a third of udocker's, and
under 40 ms; ``ucore run`` with runc (R1) at most 20 ms over a direct ``runc run``.

Run ``python3 bench/run.py --help``; ``bench/README.md`` explains the output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import _common
import _image
from _common import Case, CommandCase, Invocation, Stats

TOOLS = (
    "ucore",
    "ucore-gpuoff",
    "ucore-gpus",
    "udocker",
    "proot",
    "ucore-runc",
    "udocker-r1",
    "runc",
    "ucore-crun",
    "crun",
    "python",
    "py-pluggy",
    "ucore-ver",
    "udocker-ver",
    "py-udocker",
    "ucore-deb",
    "ucore-crun-deb",
    "ucore-f1",
    "ucore-f3",
    "fakechroot",
    "udocker-f1",
)
DEFAULT_UCORE_CMD = "{python} -m ucore run {container} /bin/true"
IMAGE = "bench/busybox:latest"
CONTAINER = "bench-run"
#: ucore's containers per engine (``{container}`` of ``--ucore-cmd``) and udocker's R1 one.
ENGINE_CONTAINERS = {"ucore": ("P1", CONTAINER), "ucore-runc": ("runc", "bench-runc")}
ENGINE_CONTAINERS["ucore-crun"] = ("crun", "bench-crun")

UDOCKER_R1 = "bench-r1"
#: Each tool and the runtime it drives, whose median is subtracted to give its overhead.
FLOORS = {
    "ucore": "proot",
    "udocker": "proot",
    "ucore-runc": "runc",
    "udocker-r1": "runc",
    "ucore-crun": "crun",
    # Fakechroot runs no runtime: its floor is the library preloaded by hand (Debian image).
    "ucore-f1": "fakechroot",
    "ucore-f3": "fakechroot",
    "udocker-f1": "fakechroot",
}
# ucore's overhead at most this share of udocker's, and under this many seconds (P1); with
# runc (R1) at most this much over runc itself.
OVERHEAD_SHARE_TARGET = 1 / 3
OVERHEAD_TARGET_S = 0.040
R1_OVERHEAD_TARGET_S = 0.020
#: ``--workload``: the host directory is bound here and walked with busybox's find.
WORK_TARGET = "/w"
WORK_COMMAND = ("/bin/busybox", "find", WORK_TARGET)
#: The tools that also get a ``TOOL+find`` row with ``--workload``, and the native row.
WORK_TOOLS = ("ucore", "udocker", "proot", "ucore-runc", "udocker-r1", "runc", "ucore-crun", "crun")
NATIVE = "native+find"

#: The glibc image the Fakechroot engines need, and ucore's containers of it per tool.
DEB_IMAGE = "bench/debian:bookworm"
DEB_CONTAINERS = {
    "ucore-deb": ("P1", "bench-deb"),
    "ucore-crun-deb": ("crun", "bench-crun-deb"),
    "ucore-f1": ("F1", "bench-f1"),
    "ucore-f3": ("F3", "bench-f3"),
}
#: udocker's F1 container of the Debian image, and the host's Fakechroot library it preloads
#: (udocker's own tools tarball is not downloaded: ``UDOCKER_TARBALL`` is empty).
UDOCKER_F1 = "bench-udocker-f1"
FAKECHROOT_SO = "/usr/lib/x86_64-linux-gnu/fakechroot/libfakechroot.so"
#: Why udocker-f1 has no find row: udocker hands every volume (even at its own path) to
#: libfakechroot as ``FAKECHROOT_DIR_MAP``, which only udocker's patched library knows; with
#: Debian's (2.20.1) the mount point is an empty directory of the root and find walks nothing.
UDOCKER_F1_NO_VOLUMES = (
    "udocker passes volumes as FAKECHROOT_DIR_MAP, which Debian's libfakechroot ignores:"
    " the bound directory shows empty"
)
DEB_TOOLS = (*DEB_CONTAINERS, "fakechroot", "udocker-f1")
#: udocker's Fakechroot modes call patchelf (F1 only to read an ELF file's interpreter) with
#: ``-q``, which Debian 12's patchelf 0.14 does not know; the wrapper drops it.
PATCHELF_WRAPPER = """#!/bin/sh
# patchelf without udocker's "-q" (Debian 12's patchelf 0.14 has no such option)
for arg do
    shift
    if [ "$arg" = -q ]; then continue; fi
    set -- "$@" "$arg"
done
exec {patchelf} "$@"
"""
#: ``--heavy``: the tools that get ``TOOL+dd`` and ``TOOL+find`` rows, against the host's.
HEAVY_TOOLS = (*DEB_CONTAINERS, "udocker-f1")
HEAVY_NATIVE = "host"
DD_ARGS = ("if=/dev/zero", "of=/dev/null", "bs=512", "count=50000")
DD_EXPECT = "50000+0 records out"
HEAVY_FIND_DEFAULT = "/usr/include"
#: The goal for F3 on both heavy workloads: its cost at most this many times the host's.
F3_HEAVY_TARGET = 1.5


class HeavyCase(CommandCase):
    """A ``--heavy`` row: a fast exit 0 proves nothing (a volume that is not shown makes find
    fail or print nothing), so the output is checked: dd's record count, or as many lines
    from find as the host's find printed."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], expect: str | int
    ) -> None:
        super().__init__(name, argv, env)
        self.expect = expect

    def verify(self, workdir: Path, result: _common.RunResult) -> Optional[str]:
        if isinstance(self.expect, str):
            if self.expect in result.stderr:
                return None
            return f"no {self.expect!r} from dd: {_common.last_line(result.stderr)}"
        lines = len(result.stdout.splitlines())
        if lines == self.expect:
            return None
        return f"find printed {lines} lines, the host's {self.expect}"


class UdockerR1Case(CommandCase):
    """udocker in R1 mode exits 1 whatever the container did; it prints runc's ``Popen``
    object on stderr, whose ``returncode`` is the container's status."""

    ok_status = (0, 1)

    def verify(self, workdir: Path, result: _common.RunResult) -> Optional[str]:
        if "returncode: 0 " in result.stderr:
            return None
        return f"runc did not run the container: {_common.last_line(result.stderr)}"


class Unavailable(Case):
    """A tool that could not be set up here: its row says why."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    def prepare(self, workdir: Path) -> Invocation:
        raise RuntimeError(self.why)


class Setup(NamedTuple):
    """What the untimed setup made: environments, the ucore container's root, the direct
    runtime commands, and why a tool could not be set up."""

    ucore_env: dict[str, str]
    udocker_env: dict[str, str]
    root: Path
    direct: dict[str, tuple[list[str], dict[str, str]]]
    unavailable: dict[str, str]
    deb_root: Optional[Path] = None


def setup_containers(args: argparse.Namespace, place: Path, udocker: Optional[Path]) -> Setup:
    """Untimed: pushes the busybox image, pulls it into both stores and creates a container
    per engine in each; writes bundles for the direct runtime runs. The registry is stopped
    before returning: no timed run can fetch anything."""
    _common.ucore_import_path()
    from ucore.testing.images import busybox_image
    from ucore.testing.push import Pusher

    ucore_store = place / "ucore"
    udocker_store = place / "udocker"
    udocker_store.mkdir()
    base = {**os.environ, "TMPDIR": str(place)}
    unavailable: dict[str, str] = {}
    registry = _image.start_registry()
    try:
        Pusher(registry.url).push(IMAGE, busybox_image())
        reference = f"{registry.address}/{IMAGE}"
        extra = {"UCORE_INSECURE": registry.address, **_common.parse_env(args.ucore_env)}
        ucore_env = _common.ucore_env(base, ucore_store, extra, installed=args.ucore_venv)
        ucore = [args.python, "-m", "ucore", "-q"]
        _common.checked([*ucore, "pull", reference], ucore_env, "ucore pull")
        for tool, (engine, name) in ENGINE_CONTAINERS.items():
            _common.checked([*ucore, "create", "--name", name, reference], ucore_env, "create")
            try:
                # The engine chosen explicitly, as for udocker below.
                _common.checked([*ucore, "setup", f"--engine={engine}", name], ucore_env, "setup")
            except RuntimeError as exc:
                unavailable[tool] = str(exc)
        root = Path(_common.checked([*ucore, "inspect", "-p", CONTAINER], ucore_env, "inspect"))
        root = Path(str(root).strip())
        wrapper = _common.write_proot_wrapper(place / "proot-no-k", args.proot)
        udocker_env = _common.udocker_env(base, udocker_store, wrapper)
        udocker_env["UDOCKER_USE_RUNC_EXECUTABLE"] = shutil.which(args.runc) or args.runc
        udocker_env["UDOCKER_FAKECHROOT_SO"] = FAKECHROOT_SO
        patchelf = place / "patchelf-no-q"
        patchelf.write_text(
            PATCHELF_WRAPPER.format(patchelf=shutil.which("patchelf") or "patchelf")
        )
        patchelf.chmod(0o755)
        udocker_env["UDOCKER_USE_PATCHELF_EXECUTABLE"] = str(patchelf)
        if udocker is not None:
            for step in (
                ["pull", f"--registry={registry.url}", IMAGE],
                ["create", f"--name={CONTAINER}", IMAGE],
                ["setup", "--execmode=P1", CONTAINER],
                ["create", f"--name={UDOCKER_R1}", IMAGE],
                ["setup", "--execmode=R1", UDOCKER_R1],
            ):
                argv = _common.udocker_argv(udocker, *step)
                _common.checked(argv, udocker_env, f"udocker {step[0]}")
        deb_root = None
        if set(DEB_TOOLS) & set(args.tools):
            deb_root = setup_debian(
                args, registry, ucore_env, udocker, udocker_env, unavailable=unavailable
            )
    finally:
        registry.stop()
    direct = {}
    for kind in ("runc", "crun"):
        binary = getattr(args, kind)
        try:
            direct[kind] = direct_command(kind, binary, root, place / kind)
            if args.workload:
                volume = Path(args.workload)
                where = place / f"{kind}+find"
                direct[f"{kind}+find"] = direct_command(kind, binary, root, where, volume)
        except (OSError, RuntimeError) as exc:
            unavailable[kind] = unavailable[f"{kind}+find"] = str(exc)
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from support import gpuhost

        host = gpuhost.build_host(place / "gpuhost")
        ucore_env = {**ucore_env, "BENCH_GPU_ROOT": str(host.root)}
    except (ImportError, OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        unavailable["ucore-gpus"] = f"no synthetic GPU host: {exc}"
    return Setup(ucore_env, udocker_env, root, direct, unavailable, deb_root)


def setup_debian(
    args: argparse.Namespace,
    registry: Any,
    ucore_env: dict[str, str],
    udocker: Optional[Path],
    udocker_env: dict[str, str],
    *,
    unavailable: dict[str, str],
) -> Optional[Path]:
    """Untimed: pushes the Debian image (the Fakechroot modes refuse the static busybox one:
    they preload a library into the image's own glibc loader), pulls it, creates and sets up a
    container per engine of :data:`DEB_CONTAINERS` and, with ``udocker-f1``, udocker's F1 one.
    Each container runs ``/bin/true`` once, untimed, so that a first run's one-time work (F3
    patches the root's ELF files) is not timed. Returns the P1 container's root (the
    ``fakechroot`` floor runs in it), or None when the image is not available here."""
    sys.path.insert(0, str(_common.REPO_ROOT / "tests"))
    try:
        from support import debian

        tar = debian.debian_rootfs_tar()
    except (ImportError, OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        for tool in (*DEB_TOOLS, *(f"{tool}+{w}" for tool in HEAVY_TOOLS for w in ("dd", "find"))):
            unavailable[tool] = f"no Debian root tar: {exc}"
        return None
    from ucore.testing.push import Pusher

    Pusher(registry.url).push(DEB_IMAGE, debian.debian_image(tar))
    reference = f"{registry.address}/{DEB_IMAGE}"
    ucore = [args.python, "-m", "ucore", "-q"]
    _common.checked([*ucore, "pull", reference], ucore_env, "ucore pull (debian)")
    for tool, (engine, name) in DEB_CONTAINERS.items():
        try:
            _common.checked([*ucore, "create", "--name", name, reference], ucore_env, "create")
            _common.checked([*ucore, "setup", f"--engine={engine}", name], ucore_env, "setup")
            _common.checked([*ucore, "run", name, "/bin/true"], ucore_env, f"first run ({engine})")
        except RuntimeError as exc:
            unavailable[tool] = unavailable[f"{tool}+dd"] = unavailable[f"{tool}+find"] = str(exc)
    name = DEB_CONTAINERS["ucore-deb"][1]
    root = Path(_common.checked([*ucore, "inspect", "-p", name], ucore_env, "inspect").strip())
    if udocker is not None and "udocker-f1" in args.tools:
        try:
            for step in (
                ["pull", f"--registry={registry.url}", DEB_IMAGE],
                ["create", f"--name={UDOCKER_F1}", DEB_IMAGE],
                ["setup", "--execmode=F1", UDOCKER_F1],
                ["run", UDOCKER_F1, "/bin/true"],
            ):
                argv = _common.udocker_argv(udocker, *step)
                _common.checked(argv, udocker_env, f"udocker {step[0]} (F1)")
            unavailable["udocker-f1+find"] = UDOCKER_F1_NO_VOLUMES
        except RuntimeError as exc:
            for row in ("udocker-f1", "udocker-f1+dd", "udocker-f1+find"):
                unavailable[row] = str(exc)
    return root


def direct_command(
    kind: str, binary: str, root: Path, place: Path, workload: Optional[Path] = None
) -> tuple[list[str], dict[str, str]]:
    """``runc run`` / ``crun run`` of ``/bin/true`` (or of the ``workload`` walk) in ``root``,
    as a user would type it, with the config ucore's plugin generates for a default run (the
    host's system directories bound, the user as the container's root). On a hybrid-cgroup host
    crun refuses to start outside a mount namespace hiding the v2 hierarchy; ``unshare``
    (util-linux) makes that one, as ucore does in-process (the row then includes ``unshare`` and
    ``sh`` starting)."""
    sys.path.insert(0, str(_common.REPO_ROOT / "plugins" / "runc" / "src"))
    from ucore.running.runspec import DEFAULT_PATH, SYSDIRS
    from ucore.values.model import Mount, RunSpec
    from ucore_runc import discover, spec

    path = shutil.which(binary, path=os.pathsep.join([os.environ.get("PATH", ""), *discover.SBIN]))
    if path is None:
        raise RuntimeError(f"no {binary} here")
    hide = kind == "crun" and discover.hybrid_controllers() is not None
    uid, gid = os.getuid(), os.getgid()
    host = (0, 0) if hide else (uid, gid)
    who = spec.identity(None, None, *host, privileged=uid == 0)
    mounts = tuple(Mount(os.path.realpath(p), p) for p in SYSDIRS if os.path.exists(p))
    command: tuple[str, ...] = ("/bin/true",)
    if workload is not None:
        mounts += (Mount(str(workload), WORK_TARGET, readonly=True),)
        command = WORK_COMMAND
    run_spec = RunSpec(argv=command, env=(("PATH", DEFAULT_PATH),), mounts=mounts)
    bundle = place / "bundle"
    bundle.mkdir(parents=True)
    config = spec.config(run_spec, root, who, proc=kind == "runc", terminal=False)
    (bundle / "config.json").write_text(json.dumps(config))
    options = ["--cgroup-manager=disabled"] if kind == "crun" else []
    argv = [path, "--root", str(place / "state"), *options, "run", "--bundle", str(bundle)]
    argv += ["--no-new-keyring", "bench"]
    if hide:
        script = 'mount -t tmpfs -o size=4k tmpfs /sys/fs/cgroup/unified && exec "$@"'
        userns = ["--user", "--map-root-user"] if uid else []
        argv = ["unshare", *userns, "--mount", "sh", "-c", script, "sh", *argv]
    return argv, {"PATH": discover.runtime_env()["PATH"]}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = _common.bench_parser(
        "Time ucore run against udocker run and proot itself (/bin/true).",
        runs=20,
        warmup=3,
        tools=TOOLS,
        tools_help="ucore, udocker, proot (P1); ucore-gpuoff (P1, ucore-gpu blocked),"
        " ucore-gpus (P1, --gpus all on a synthetic 4-GPU host); ucore-runc, udocker-r1, runc,"
        " ucore-crun, crun (OCI runtimes); python (python -c pass), py-pluggy"
        " (python -c 'import pluggy'), ucore-ver (python -m ucore version), udocker-ver"
        " (udocker version), py-udocker (python -c pass with udocker's venv interpreter);"
        " on a Debian image: ucore-deb (P1), ucore-crun-deb, ucore-f1, ucore-f3 (Fakechroot),"
        " fakechroot (the library preloaded directly), udocker-f1",
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
    parser.add_argument("--runc", default="runc", help="runc for the direct run and udocker R1")
    parser.add_argument("--crun", default="crun", help="crun for the direct run")
    parser.add_argument(
        "--workload",
        metavar="DIR",
        help="also time a path-heavy workload: busybox's find over this host directory, bound"
        " read-only in each container (a TOOL+find row per tool, and native+find on the host)",
    )
    parser.add_argument(
        "--heavy",
        action="store_true",
        help="also time system-call-heavy workloads on the Debian containers (ucore-deb,"
        " ucore-crun-deb, ucore-f1, ucore-f3, udocker-f1): TOOL+dd (dd bs=512 count=50000 from"
        " /dev/zero to /dev/null) and TOOL+find (GNU find -H over --workload, default"
        f" {HEAVY_FIND_DEFAULT}, bound read-only at {WORK_TARGET}); host+dd and host+find run"
        " the host's own dd and find",
    )
    parser.add_argument("--timeout", type=float, default=60, help="seconds per command")
    parser.add_argument("--verbose", action="store_true", help="a line per run, not per round")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless ucore meets its overhead targets"
    )
    args = _common.parse_checked(parser, argv, TOOLS)
    if not {"udocker", "udocker-r1", "udocker-f1"} & set(args.tools):
        for tool in ("py-udocker", "udocker-ver"):
            if tool in args.tools:
                args.tools.remove(tool)
    return args


def make_cases(args: argparse.Namespace, setup: Setup, udocker: Optional[Path]) -> list[Case]:
    python = args.python
    store = setup.ucore_env["UCORE_DIR"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "proot": ([args.proot, "-r", str(setup.root), "/bin/true"], dict(os.environ)),
        "python": ([python, "-c", "pass"], dict(os.environ)),
        "py-pluggy": ([python, "-c", "import pluggy"], dict(os.environ)),
        "ucore-ver": ([python, "-m", "ucore", "version"], setup.ucore_env),
        **setup.direct,
    }
    for tool, (_engine, name) in {**ENGINE_CONTAINERS, **DEB_CONTAINERS}.items():
        argv = shlex.split(args.ucore_cmd.format(python=python, container=name, store=store))
        commands[tool] = (argv, setup.ucore_env)
    if setup.deb_root is not None:
        commands["fakechroot"] = fakechroot_command(setup.deb_root, "/usr/bin/true")
    # What ucore-gpu's prepare hook adds to a P1 run: ``ucore`` (plugin installed, no request)
    # against ``ucore-gpuoff`` (the plugin blocked); ``ucore-gpus`` (``--gpus all`` on the
    # tests' synthetic 4-GPU host) against ``ucore``.
    argv = shlex.split(args.ucore_cmd.format(python=python, container=CONTAINER, store=store))
    commands["ucore-gpuoff"] = (argv, {**setup.ucore_env, "UCORE_DISABLE_PLUGINS": "gpu"})
    if "BENCH_GPU_ROOT" in setup.ucore_env:
        gpus = [*argv[: argv.index("run") + 1], "--gpus", "all", *argv[argv.index("run") + 1 :]]
        root = setup.ucore_env["BENCH_GPU_ROOT"]
        commands["ucore-gpus"] = (gpus, {**setup.ucore_env, "UCORE_DEVICE_ROOT": root})
    if udocker is not None:
        for tool, name in (("udocker", CONTAINER), ("udocker-r1", UDOCKER_R1)):
            commands[tool] = (
                _common.udocker_argv(udocker, "run", name, "/bin/true"),
                setup.udocker_env,
            )
        argv = _common.udocker_argv(udocker, "run", "--nobanner", UDOCKER_F1, "/bin/true")
        commands["udocker-f1"] = (argv, setup.udocker_env)
        commands["udocker-ver"] = (_common.udocker_argv(udocker, "version"), setup.udocker_env)
        udocker_python = str(udocker.parent / "python")
        commands["py-udocker"] = ([udocker_python, "-c", "pass"], dict(os.environ))
    if args.workload:
        commands.update(workload_commands(args, setup, udocker))
    if args.heavy:
        commands.update(heavy_commands(args, setup, udocker))
    cases: list[Case] = []
    for tool in args.tools:
        rows = [tool, f"{tool}+find"] if args.workload and tool in WORK_TOOLS else [tool]
        if args.heavy and tool in HEAVY_TOOLS:
            rows += [f"{tool}+dd", f"{tool}+find"]
        for row in rows:
            if row in setup.unavailable:
                cases.append(Unavailable(row, setup.unavailable[row]))
            elif row in commands and row.endswith(("+dd", "+find")) and tool in HEAVY_TOOLS:
                cases.append(HeavyCase(row, *commands[row], heavy_expect(row, commands)))
            elif row in commands:
                kind = UdockerR1Case if row.startswith("udocker-r1") else CommandCase
                cases.append(kind(row, *commands[row]))
    if args.workload:
        cases.append(CommandCase(NATIVE, *commands[NATIVE]))
    if args.heavy:
        for workload in ("dd", "find"):
            row = f"{HEAVY_NATIVE}+{workload}"
            cases.append(HeavyCase(row, *commands[row], heavy_expect(row, commands)))
    return cases


def heavy_expect(row: str, commands: dict[str, tuple[list[str], dict[str, str]]]) -> str | int:
    """What a ``--heavy`` row must print: dd's record line, or the line count of the host's
    find over the same directory (run once here, untimed)."""
    if row.endswith("+dd"):
        return DD_EXPECT
    argv, env = commands[f"{HEAVY_NATIVE}+find"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def fakechroot_command(root: Path, program: str) -> tuple[list[str], dict[str, str]]:
    """The Fakechroot floor: ``program`` of ``root`` started through the root's own loader with
    the host's libfakechroot preloaded and ``FAKECHROOT_BASE`` the root, which is what the F
    modes arrange before the container's program runs, without any engine's setting up. The
    library is preloaded with the loader's ``--preload``, not ``LD_PRELOAD``: in the
    environment it would also load into ``/usr/bin/time``, whose report path it then moves
    under the root."""
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    loader = libdir / "ld-linux-x86-64.so.2"
    argv = [str(loader), "--preload", FAKECHROOT_SO, "--library-path", str(libdir)]
    argv.append(str(root) + program)
    env = {**os.environ, "FAKECHROOT_BASE": str(root)}
    return argv, env


def heavy_commands(
    args: argparse.Namespace, setup: Setup, udocker: Optional[Path]
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """``TOOL+dd`` and ``TOOL+find`` in each Debian container, and ``host+dd`` /
    ``host+find``: the host's own dd and find, the honest native (the container's binaries
    are the same Debian 12 builds, but running them on the host would need its loader and
    library path, which is itself part of what F modes do). find gets ``-H`` everywhere: the
    F modes show a volume at another path as a link placed in the root, which find would
    list, not walk, without it (``-H`` follows only the starting point)."""
    volume = str(Path(args.workload or HEAVY_FIND_DEFAULT).resolve())
    dd = ("/usr/bin/dd", *DD_ARGS)
    find = ("/usr/bin/find", "-H", WORK_TARGET)
    host_dd = shutil.which("dd") or "/usr/bin/dd"
    host_find = shutil.which("find") or "/usr/bin/find"
    commands = {
        f"{HEAVY_NATIVE}+dd": ([host_dd, *DD_ARGS], dict(os.environ)),
        f"{HEAVY_NATIVE}+find": ([host_find, "-H", volume], dict(os.environ)),
    }
    for tool, (_engine, name) in DEB_CONTAINERS.items():
        run = [args.python, "-m", "ucore", "run"]
        commands[f"{tool}+dd"] = ([*run, name, *dd], setup.ucore_env)
        bound = [*run, "-v", f"{volume}:{WORK_TARGET}:ro", name, *find]
        commands[f"{tool}+find"] = (bound, setup.ucore_env)
    if udocker is not None:
        # No udocker-f1+find: see UDOCKER_F1_NO_VOLUMES.
        argv = _common.udocker_argv(udocker, "run", "--nobanner")
        commands["udocker-f1+dd"] = ([*argv, UDOCKER_F1, *dd], setup.udocker_env)
    return commands


def workload_commands(
    args: argparse.Namespace, setup: Setup, udocker: Optional[Path]
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """``TOOL+find``: the walk of ``--workload`` in each container, and on the host with the
    container's own busybox (``native+find``)."""
    volume = str(Path(args.workload).resolve())
    commands = {
        NATIVE: ([str(setup.root / "bin" / "busybox"), "find", volume], dict(os.environ)),
        "proot+find": (
            [args.proot, "-r", str(setup.root), "-b", f"{volume}:{WORK_TARGET}", *WORK_COMMAND],
            dict(os.environ),
        ),
    }
    for tool, (_engine, name) in ENGINE_CONTAINERS.items():
        argv = [args.python, "-m", "ucore", "run", "-v", f"{volume}:{WORK_TARGET}:ro", name]
        commands[f"{tool}+find"] = ([*argv, *WORK_COMMAND], setup.ucore_env)
    if udocker is not None:
        for tool, name in (("udocker", CONTAINER), ("udocker-r1", UDOCKER_R1)):
            argv = _common.udocker_argv(udocker, "run", "-v", f"{volume}:{WORK_TARGET}", name)
            commands[f"{tool}+find"] = ([*argv, *WORK_COMMAND], setup.udocker_env)
    return commands


def proot_version(proot: str) -> str:
    """The version proot prints (in its banner: ``-V`` draws a logo with the number)."""
    try:
        proc = subprocess.run([proot, "-V"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    found = re.search(r"\b\d+\.\d+(?:\.\d+)?\b", proc.stdout + proc.stderr)
    return found.group(0) if found else "?"


def print_header(args: argparse.Namespace, place: Path, setup: Setup) -> None:
    print(f"image     {IMAGE}: one layer, static busybox (ucore.testing.images.busybox_image)")
    print(f"stores    {place} ({_common.filesystem_type(place)})")
    print(f"rounds    {args.warmup} warm-up + {args.runs} counted, in turn: {' '.join(args.tools)}")
    print(
        f"machine   {os.cpu_count()} CPUs, {_common.python_info()}, load {_common.load_average()}"
    )
    print(f"user      uid {os.getuid()}")
    venv = " (clean venv, --ucore-venv)" if args.ucore_venv else ""
    print(f"{{python}}  {args.python}{venv}")
    runc = shutil.which(args.runc, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    versions = {
        "udocker": f"udocker {_common.UDOCKER_VERSION} from PyPI: udocker run {CONTAINER}"
        f" /bin/true (P1; proot {args.proot} behind a sh wrapper that drops -k)",
        "proot": f"{args.proot} -r ROOT /bin/true  (proot {proot_version(args.proot)};"
        f" ROOT: the ucore container's, {setup.root})",
        "udocker-r1": f"udocker run {UDOCKER_R1} /bin/true (R1, UDOCKER_USE_RUNC_EXECUTABLE="
        f"{runc}; it exits 1 whatever happens: success is read from its stderr)",
        "python": "{python} -c pass: the interpreter's start",
        "py-pluggy": "{python} -c 'import pluggy': the floor of any command built on pluggy",
        "udocker-ver": "udocker version: udocker's command line starting",
        "ucore-ver": "{python} -m ucore version: ucore's command line and plugins loading",
        "py-udocker": f"{_common.UDOCKER_VENV}/bin/python -c pass: udocker's interpreter",
    }
    for tool, (engine, name) in ENGINE_CONTAINERS.items():
        command = args.ucore_cmd.format(python="{python}", container=name, store="")
        versions[tool] = f"{command}  (`ucore setup --engine={engine} {name}` first)"
    for tool, (engine, name) in DEB_CONTAINERS.items():
        command = args.ucore_cmd.format(python="{python}", container=name, store="")
        versions[tool] = f"{command}  ({DEB_IMAGE}, `ucore setup --engine={engine} {name}`)"
    versions["fakechroot"] = (
        f"ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --preload {FAKECHROOT_SO}"
        f" ROOT/usr/bin/true with FAKECHROOT_BASE=ROOT (ROOT: bench-deb's, {setup.deb_root})"
    )
    versions["udocker-f1"] = (
        f"udocker run {UDOCKER_F1} /bin/true (F1, {DEB_IMAGE},"
        f" UDOCKER_FAKECHROOT_SO={FAKECHROOT_SO})"
    )
    for kind, (argv, _env) in setup.direct.items():
        version = _common.command_version([argv[argv.index("--root") - 1], "--version"])
        versions[kind] = f"{shlex.join(argv)}  ({version}; config from ucore_runc.spec)"
    for tool in args.tools:
        print(f"  {tool:<10} {versions.get(tool, setup.unavailable.get(tool, ''))}")
    if args.workload:
        print(
            f"workload  TOOL+find: {shlex.join(WORK_COMMAND)} with {args.workload} bound"
            f" read-only at {WORK_TARGET} (after each of {', '.join(WORK_TOOLS)});"
            f" {NATIVE}: ROOT/bin/busybox find {args.workload} on the host"
        )
    if args.heavy:
        volume = args.workload or HEAVY_FIND_DEFAULT
        print(
            f"heavy     TOOL+dd: dd {' '.join(DD_ARGS)}; TOOL+find: /usr/bin/find -H"
            f" {WORK_TARGET} with {volume} bound read-only (udocker-f1: at {volume}; after"
            f" each of {', '.join(HEAVY_TOOLS)}); {HEAVY_NATIVE}+dd, {HEAVY_NATIVE}+find: the"
            f" host's dd and find -H {volume}"
        )


def report(stats: list[Stats]) -> bool:
    """Prints the table, each tool's overhead over the runtime it drives and the targets;
    returns whether ucore met the targets it was measured against."""
    by_name = {item.name: item for item in stats}
    print()
    _common.print_table(stats)
    print()

    def median(name: str) -> Optional[float]:
        item = by_name.get(name)
        return item.median if item is not None and item.ok and item.median else None

    overheads: dict[str, Optional[float]] = {}
    print("overhead over the runtime each tool drives (its median - the runtime's median):")
    for tool, floor in FLOORS.items():
        if tool not in by_name:
            continue
        mine, base = median(tool), median(floor)
        overheads[tool] = mine - base if mine is not None and base is not None else None
        value = overheads[tool]
        text = f"{value * 1000:7.1f} ms" if value is not None else "    n/a"
        print(f"  {tool:<12} over {floor:<10} {text}")
    checks: list[Optional[bool]] = []
    ucore, udocker = overheads.get("ucore"), overheads.get("udocker")
    if "ucore" in by_name:
        share_ok: Optional[bool] = None
        if ucore is not None and udocker is not None and udocker > 0:
            share = ucore / udocker
            share_ok = share <= OVERHEAD_SHARE_TARGET
            text = f"{share:6.2f}x   target <= {OVERHEAD_SHARE_TARGET:.2f}x"
        else:
            text = "   n/a (needs ucore's and udocker's overheads)"
        _common.print_check("ucore/udocker overhead (P1)", text, share_ok)
        absolute_ok = None if ucore is None else ucore < OVERHEAD_TARGET_S
        text = "   n/a" if ucore is None else f"{ucore * 1000:6.1f} ms target < 40 ms"
        _common.print_check("ucore overhead (P1)", text, absolute_ok)
        checks += [share_ok, absolute_ok]
    if "ucore-runc" in by_name:
        runc = overheads.get("ucore-runc")
        r1_ok = None if runc is None else runc <= R1_OVERHEAD_TARGET_S
        text = "   n/a" if runc is None else f"{runc * 1000:6.1f} ms target <= 20 ms"
        _common.print_check("ucore overhead (R1, runc)", text, r1_ok)
        checks.append(r1_ok)
    contexts = (
        ("python", "python -c pass"),
        ("py-pluggy", "import pluggy"),
        ("ucore-ver", "ucore version"),
        ("udocker-ver", "udocker version"),
        ("py-udocker", "udocker's python"),
    )
    for name, label in contexts:
        value = median(name)
        if value is not None:
            print(f"{label:<18} {value * 1000:6.1f} ms (context)")
    native = median(NATIVE)
    if native is not None:
        print("workload: the walk's cost (TOOL+find's median - TOOL's), and that over")
        print(f"native+find's median ({native * 1000:.1f} ms, walk and busybox's start):")
        for tool in WORK_TOOLS:
            walk, start = median(f"{tool}+find"), median(tool)
            if walk is not None and start is not None:
                work = walk - start
                print(f"  {tool:<12} {work * 1000:8.1f} ms  {work / native:6.2f}x native")
    checks += report_heavy(median)
    plain, off, gpus = median("ucore"), median("ucore-gpuoff"), median("ucore-gpus")
    if plain is not None and (off is not None or gpus is not None):
        print("ucore-gpu's prepare hook, P1 (medians of this run):")
        if off is not None:
            print(f"  no request   {(plain - off) * 1000:6.1f} ms (ucore - ucore-gpuoff)")
        if gpus is not None:
            print(f"  --gpus all   {(gpus - plain) * 1000:6.1f} ms (ucore-gpus - ucore)")
    version = median("ucore-ver")
    for tool in (*ENGINE_CONTAINERS, *DEB_CONTAINERS):
        run = median(tool)
        if run is not None and version is not None:
            print(
                f"{tool + ' - version':<24} {(run - version) * 1000:6.1f} ms (run beyond starting)"
            )
    return bool(checks) and all(checks)


def report_heavy(median: Callable[[str], Optional[float]]) -> list[Optional[bool]]:
    """Prints each ``--heavy`` row's median and its ratio to the host's, and its cost (the
    row's median minus the same tool's ``/bin/true`` median, so that ucore's or udocker's
    start, which the host's dd and find do not pay, is left out) over the host's; checks F3's
    goal on that cost. Returns the check's outcome, or nothing when F3 was not measured."""
    if median(f"{HEAVY_NATIVE}+dd") is None and median(f"{HEAVY_NATIVE}+find") is None:
        return []
    print("heavy workloads: median, its ratio to the host's, and its cost (median minus the")
    print("tool's /bin/true median) over the host's median:")
    f3_ratios: list[Optional[float]] = []
    for workload in ("dd", "find"):
        native = median(f"{HEAVY_NATIVE}+{workload}")
        if native is None:
            f3_ratios.append(None)
            continue
        print(f"  {HEAVY_NATIVE + '+' + workload:<18} {native * 1000:8.1f} ms")
        f3_ratio: Optional[float] = None
        for tool in HEAVY_TOOLS:
            whole, start = median(f"{tool}+{workload}"), median(tool)
            if whole is None:
                continue
            text = f"  {tool + '+' + workload:<18} {whole * 1000:8.1f} ms {whole / native:7.2f}x"
            if start is not None:
                cost = (whole - start) / native
                text += f"   cost {(whole - start) * 1000:8.1f} ms {cost:7.2f}x"
                if tool == "ucore-f3":
                    f3_ratio = cost
            print(text)
        f3_ratios.append(f3_ratio)
    if median("ucore-f3+dd") is None and median("ucore-f3+find") is None:
        return []
    ok: Optional[bool] = None
    if all(value is not None for value in f3_ratios):
        ok = all(value is not None and value <= F3_HEAVY_TARGET for value in f3_ratios)
    shown = " ".join("n/a" if value is None else f"{value:.2f}x" for value in f3_ratios)
    label = "F3 heavy cost"
    _common.print_check(label, f"dd, find {shown} target <= {F3_HEAVY_TARGET}x native", ok)
    return [ok]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    needed = {_common.GNU_TIME: "time", "docker-registry": "docker-registry", args.proot: "proot"}
    missing = [package for binary, package in needed.items() if shutil.which(binary) is None]
    if missing:
        raise SystemExit(f"missing tools: apt-get install {' '.join(missing)}")
    wants_udocker = {"udocker", "udocker-r1", "udocker-f1"} & set(args.tools)
    udocker = _common.ensure_udocker() if wants_udocker else None
    if args.ucore_venv:
        args.python = str(_common.ensure_ucore_venv())
    _common.compile_sources(args.python)
    args.store_dir.mkdir(parents=True, exist_ok=True)
    place = Path(tempfile.mkdtemp(prefix="ucore-bench-run-", dir=args.store_dir))
    try:
        setup = setup_containers(args, place, udocker)
        cases = make_cases(args, setup, udocker)
        print()
        print_header(args, place, setup)
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
            "runc": args.runc,
            "crun": args.crun,
            "workload": args.workload,
            "heavy": args.heavy,
            "deb_image": DEB_IMAGE,
            "uid": os.getuid(),
            "cpus": os.cpu_count(),
        }
        _common.write_json(args.json, meta, samples, stats)
    print(f"\nload {_common.load_average()}; bench took {time.monotonic() - started:.0f} s")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
