"""Running containers: ``run``, ``setup`` (which engine a container uses) and ``info`` (which
engines this host can use, and why not).

``run`` keeps start-up lean: nothing on its path imports the registry client or structlog
unless it has to pull an image or log something.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ucore import api
from ucore.commands import add_registry_options
from ucore.log import get_logger
from ucore.storage import containers
from ucore.values.errors import UcoreError, UsageError
from ucore.values.model import Container

if TYPE_CHECKING:
    from ucore.session import Session

log = get_logger(__name__)

#: Docker flags accepted for compatibility, and why they change nothing here.
IGNORED = {
    "interactive": ("-i", "stdin is always passed through"),
    "tty": ("-t", "the container uses ucore's own terminal, if it has one"),
    "attach": ("-a", "stdout and stderr are always attached"),
    "dns": ("--dns", "the container uses the host's resolv.conf"),
    "dns_search": ("--dns-search", "the container uses the host's resolv.conf"),
    "nobanner": ("--nobanner", "ucore prints no banner"),
}


def add_commands(sub: Any, common: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # ``-v`` is a volume here, as in Docker and udocker; ``ucore -v run`` or ``--verbose``
    # raise the log level.
    p = sub.add_parser(
        "run",
        parents=[_run_common()],
        help="run a command in a container (an image is pulled and a container created)",
        description="Run CMD in CONTAINER, or in a new container made from IMAGE.",
        epilog="The exit status is the command's (128+N when signal N killed it); ucore's own"
        " failures exit with the statuses 'ucore --help' lists (127: command not found).",
    )
    p.add_argument("--rm", action="store_true", help="remove the container afterwards")
    p.add_argument("--name", metavar="NAME", help="name the container created from an image")
    p.add_argument(
        "--pull",
        choices=api.PULL_POLICIES,
        default="missing",
        help="when to pull an image (reuse: run the container --name names, if it exists)",
    )
    add_registry_options(p)
    p.add_argument("--entrypoint", metavar="CMD", help="replace the image's Entrypoint and Cmd")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="set a variable (NAME alone: the host's value)",
    )
    p.add_argument(
        "--env-file", action="append", default=[], metavar="FILE", help="NAME=VALUE lines"
    )
    p.add_argument("--hostenv", action="store_true", help="pass the host environment")
    p.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="HOST[:CONT][:ro|:rw]",
        help="bind a host path (repeatable)",
    )
    p.add_argument(
        "--novol", action="append", default=[], metavar="PATH", help="leave out a default bind"
    )
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="HOST[:CONT]|KIND[=WHICH]",
        help="a device node, or devices a plugin provides (nvidia.com/gpu=0, infiniband=mlx5_0)",
    )
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory (made if missing)")
    p.add_argument("-u", "--user", metavar="NAME|UID[:GROUP|GID]", help="the user to run as")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument(
        "--hostauth",
        dest="hostauth",
        action="store_true",
        default=True,
        help="add the invoking user to the container's passwd and group (default)",
    )
    auth.add_argument(
        "--containerauth",
        dest="hostauth",
        action="store_false",
        help="use the container's passwd and group as they are",
    )
    p.add_argument("--bindhome", action="store_true", help="bind the home directory")
    p.add_argument(
        "--nosysdirs", action="store_true", help="no default host binds (/dev /proc /sys ...)"
    )
    p.add_argument("--nometa", action="store_true", help="ignore the image config")
    p.add_argument("--cpuset-cpus", dest="cpuset", metavar="LIST", help="CPUs to run on (0-3,6)")
    p.add_argument("--kernel", metavar="RELEASE", help="kernel release to report (PRoot)")
    p.add_argument("--location", metavar="DIR", help="run a root directory outside the store")
    p.add_argument("-i", "--interactive", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-t", "--tty", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-a", "--attach", action="append", help=argparse.SUPPRESS)
    p.add_argument("--dns", action="append", help=argparse.SUPPRESS)
    p.add_argument("--dns-search", action="append", help=argparse.SUPPRESS)
    p.add_argument("--nobanner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="CONTAINER|IMAGE [CMD ...]")
    p.set_defaults(handler=cmd_run)
    parsers = {"run": p}

    q = sub.add_parser("setup", parents=[common], help="choose the engine a container runs with")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument(
        "--engine", "--execmode", dest="engine", metavar="NAME", help="engine or udocker mode"
    )
    q.add_argument("--force", action="store_true", help="record it even if it cannot run here")
    q.add_argument("--purge", action="store_true", help="remove files ucore made for runs")
    q.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="KIND[=WHICH]",
        help="devices to bind at every run (nvidia.com/gpu, infiniband); nothing is copied",
    )
    q.add_argument("--nodevice", action="store_true", help="forget the recorded devices")
    q.add_argument("container", metavar="CONTAINER")
    q.set_defaults(handler=cmd_setup)
    parsers["setup"] = q

    r = sub.add_parser("info", parents=[common], help="engines installed, and which work here")
    r.add_argument("--json", action="store_true", help="JSON on stdout")
    r.add_argument(
        "--devices",
        action="store_true",
        help="the devices the provider plugins find, and what a request would bind",
    )
    r.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="KIND[=WHICH]",
        help="with --devices: the request to explain (default: each provider's default)",
    )
    r.set_defaults(handler=cmd_info)
    parsers["info"] = r
    return parsers


def _run_common() -> argparse.ArgumentParser:
    from ucore.commands.parsing import Parser

    common = Parser(add_help=False)
    common.add_argument(
        "--verbose", action="count", default=argparse.SUPPRESS, help="more log output"
    )
    common.add_argument("--log-format", choices=("console", "json"), default=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    return common


# --- run ------------------------------------------------------------------------------------


def cmd_run(session: Session, args: argparse.Namespace) -> int:
    from ucore.running import runspec

    rest = list(args.args)
    if rest and rest[0] == "--":
        rest.pop(0)
    for dest, (flag, why) in IGNORED.items():
        if getattr(args, dest):
            log.info(f"{flag} is accepted and ignored: {why}")
    target = None if args.location or not rest else rest.pop(0)
    if rest and rest[0] == "--":
        rest.pop(0)
    opts = runspec.RunOptions(
        command=tuple(rest),
        entrypoint=args.entrypoint,
        env=tuple(args.env),
        env_files=tuple(args.env_file),
        hostenv=args.hostenv,
        pass_env=api.pass_env(session),
        workdir=args.workdir,
        user=args.user,
        volumes=tuple(args.volume),
        novol=tuple(args.novol),
        devices=tuple(args.device),
        hostauth=args.hostauth,
        sysdirs=not args.nosysdirs,
        meta=not args.nometa,
        bindhome=args.bindhome,
        cpuset=args.cpuset,
        kernel=args.kernel,
        launcher_binds=session.config.launcher_binds,
    )
    return api.run(
        session,
        target,
        opts,
        name=args.name,
        pull=args.pull,
        remove=args.rm,
        location=args.location,
    )


# --- setup ----------------------------------------------------------------------------------


def cmd_setup(session: Session, args: argparse.Namespace) -> int:
    from ucore.builtin.execute import AUTO, engines

    store = session.store
    container = containers.lookup(store, args.container)
    if args.purge:
        import shutil

        from ucore.builtin.devices import RECORD

        for made in ("hostauth", "hostfiles"):
            shutil.rmtree(Path(container.dir) / made, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(container.dir) / RECORD)
    if args.device or args.nodevice:
        from ucore.plugins import devices

        if args.device and args.nodevice:
            raise UsageError("setup: --device and --nodevice together")
        recorded = devices.check_recordable(session, args.device) if args.device else []
        container = containers.update(store, container, devices=tuple(recorded))
    if args.engine is None:
        if not (args.purge or args.device or args.nodevice):
            print(container.engine or f"{AUTO} (chosen at the next run)")
            for text in container.devices:
                print(f"device {text} (bound at every run)")
        return 0
    known = engines(session)
    name = None if args.engine == AUTO else known.canonical(args.engine)
    if name is not None:
        why = known.probe(name) or known.refusal(name, container)
        if why is not None and not args.force:
            from ucore.values.errors import PluginError

            raise PluginError(f"engine {name} cannot run here: {why} (--force records it anyway)")
    _release(known, container, name)
    containers.update(store, container, engine=name)
    return 0


def _release(known: Any, container: Container, successor: Optional[str]) -> None:
    """Let the engine a container leaves undo what it changed in the root (Fakechroot's F3
    patches): an engine may offer ``release(container, successor)``."""
    if not container.engine:
        return
    try:
        previous = known.canonical(container.engine)
    except UcoreError:  # its plugin is gone: nothing can undo what it did
        return
    release = getattr(known.engine(previous), "release", None)
    if release is not None and previous != successor:
        release(container, successor)


# --- info -----------------------------------------------------------------------------------


def cmd_info(session: Session, args: argparse.Namespace) -> int:
    from ucore import __version__
    from ucore.builtin.execute import PROVIDERS, engines

    if args.devices:
        return _info_devices(session, args)
    if args.device:
        raise UsageError("info: --device goes with --devices")
    known = engines(session)
    rows: list[dict[str, Any]] = []
    for name in known.names():
        cls = known.registry[name]
        plugin = known.registry.owner(name)
        why = known.probe(name)
        try:
            details: dict[str, Any] = dict(getattr(known.engine(name), "details", dict)())
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the rest
            details = {"error": f"{type(exc).__name__}: {exc}"}
        rows.append(
            {
                "name": name,
                "aliases": list(getattr(cls, "aliases", ())),
                "preference": getattr(cls, "preference", 100),
                "plugin": session.plugins.sources.get(plugin, (plugin, ""))[0],
                "usable": why is None,
                "reason": why,
                "details": {str(k): str(v) for k, v in details.items()},
            }
        )
    provided = {a.upper() for r in rows for a in [r["name"], *r["aliases"]]}
    missing: dict[str, list[str]] = {}
    for mode, dist in PROVIDERS.items():
        if mode.isupper() and mode not in provided:
            missing.setdefault(dist, []).append(mode)
    data = {
        "ucore": __version__,
        "python": sys.version.split()[0],
        "store": str(session.store.root),
        "site_store": str(session.config.site_store) if session.config.site_store else None,
        "engines": rows,
        "missing": [{"plugin": d, "modes": m} for d, m in missing.items()],
    }
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _print_info(data)
    return 0


def _print_info(data: dict[str, Any]) -> None:
    print(f"ucore {data['ucore']} (Python {data['python']}), store {data['store']}")
    if data["site_store"]:
        print(f"site store (read-only): {data['site_store']}")
    print("engines, in the order a new container tries them:")
    if not data["engines"]:
        print("  none installed (pip install ucore-proot)")
    for row in data["engines"]:
        status = "usable" if row["usable"] else f"unusable: {row['reason']}"
        aliases = ",".join(row["aliases"]) or "-"
        print(f"  {row['name']:<16} {aliases:<6} {row['plugin']:<18} {status}")
        for key, value in row["details"].items():
            print(f"  {'':<16} {key}: {value}")
    for item in data["missing"]:
        print(f"  {','.join(item['modes'])}: not installed (pip install {item['plugin']})")
    if os.environ.get("UCORE_DISABLE_PLUGINS"):
        print(f"plugins disabled by UCORE_DISABLE_PLUGINS: {os.environ['UCORE_DISABLE_PLUGINS']}")


def _info_devices(session: Session, args: argparse.Namespace) -> int:
    """``info --devices``: each provider's report (what it found, from which source, what the
    request would bind, what is missing and why), and how each engine honours a selection."""
    from ucore.builtin.execute import engines
    from ucore.plugins import devices
    from ucore.values.model import DeviceRequest

    known = devices.providers(session)
    asked = [known.canonical(r) for r in devices.parse_requests(args.device)]
    rows = []
    for kind in known.registry:
        requests = [r for r in asked if r.kind == kind] or [DeviceRequest(kind)]
        report = dict(known.provider(kind).report(requests))
        plugin = known.registry.owner(kind)
        report.update(kind=kind, plugin=session.plugins.sources.get(plugin, (plugin, ""))[0])
        rows.append(report)
    engine_rows = []
    found = engines(session)
    for name in found.names():
        hides = bool(getattr(found.registry[name], "hides_devices", False))
        engine_rows.append({"name": name, "hides_devices": hides})
    data = {"providers": rows, "engines": engine_rows}
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print("no device provider installed (pip install ucore-gpu)")
    for row in rows:
        print(f"{row['kind']} ({row['plugin']}):")
        for line in row.get("summary", ()):
            print(f"  {line}")
    if rows:
        print("engines:")
    for e in engine_rows if rows else ():
        how = (
            "its own /dev: only the selected device nodes (and control nodes) are bound"
            if e["hides_devices"]
            else "the host's /dev: every node is visible; the selection is enforced by the"
            " visible-device variables (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES, ...)"
        )
        print(f"  {e['name']:<16} {how}")
    return 0
