"""The MPI command line: ``ucore mpi check``, ``run --mpi=host|none`` and its setting.

===================  ==================  =============================================
setting (``[mpi]``)  environment         meaning
===================  ==================  =============================================
``bind``             ``UCORE_MPI_BIND``  ``host``: every run binds the host's MPI
                                         (as ``run --mpi=host``); ``none`` (default)
===================  ==================  =============================================

The host's tree is the GPU plugin's device root (``UCORE_DEVICE_ROOT``, default ``/``), so a
synthetic host describes its MPI too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ucore.values.errors import IntegrityError, NotFoundError, StoreError, UsageError

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, Preparation, RunSpec

MODES = ("host", "none")


def add_run_option(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--mpi",
        choices=MODES,
        help="host: bind the host's MPI and fabric libraries over the image's, where"
        " ABI-compatible (ucore-gpu)",
    )


def add_command(commands: Any) -> None:
    from ucore.commands.parsing import RawFormatter

    mpi = commands.add_parser("mpi", help="check an image's MPI against the host's (ucore-gpu)")
    sub = mpi.add_subparsers(dest="mpi_command", metavar="COMMAND", parser_class=type(mpi))
    check = sub.add_parser(
        "check",
        formatter_class=RawFormatter,
        help="will the host's MPI launcher start this image's ranks?",
        description="Compare the host's MPI (flavour, version, ABI, PMI) with an image's or a"
        " container's, read from their files, and explain a mismatch before a job wastes an"
        " allocation.",
        epilog="exit status:\n    0  the launcher can start the image's ranks\n"
        "    9  it cannot (the problems are listed)\n"
        "    2  usage error;  3  no such image or container in the store",
    )
    check.add_argument("target", metavar="IMAGE|CONTAINER")
    check.add_argument(
        "--launcher",
        choices=("mpirun", "srun"),
        help="the launcher the job will use (default: srun inside a Slurm allocation, else mpirun)",
    )
    check.add_argument("--json", action="store_true", help="JSON on stdout")
    check.set_defaults(handler=cmd_check)
    mpi.set_defaults(handler=_usage)


def _usage(_session: Session, _args: argparse.Namespace) -> int:
    raise UsageError("mpi: give a command: check")


def cmd_check(session: Session, args: argparse.Namespace) -> int:
    from ucore_gpu import mpicheck, mpiinfo

    host_tree = _host_tree(session)
    host = mpiinfo.side(host_tree)
    found = mpicheck.launchers(_host_path(host_tree))
    launcher = args.launcher or mpicheck.default_launcher(found, os.environ)
    with _root_of(session, args.target) as root:
        image = mpiinfo.side(mpiinfo.Tree(root))
    verdict = mpicheck.compare(host, found, image, launcher)
    if args.json:
        import json

        json.dump(mpicheck.report(host, found, image, verdict), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(
            "".join(f"{line}\n" for line in mpicheck.lines(host, found, image, verdict))
        )
    return 0 if verdict.compatible else mpicheck.INCOMPATIBLE


def _host_tree(session: Session) -> Any:
    from ucore_gpu import mpiinfo, settings

    return mpiinfo.Tree(settings.load(session).root)


def _host_path(tree: Any) -> Optional[str]:
    """Where to look for ``mpirun`` and ``srun``: ``PATH``, or the synthetic host's own."""
    if str(tree.root) == "/":
        return None
    return os.pathsep.join(f"{tree.root}{d}" for d in ("/usr/local/bin", "/usr/bin", "/bin"))


@contextlib.contextmanager
def _root_of(session: Session, text: str) -> Iterator[Path]:
    """A container's root, or an image's unpacked into a scratch directory for the check."""
    from ucore.storage import containers, images
    from ucore.storage.trees import remove_tree

    store = session.store
    container = containers.find(store, text)
    if container is not None:
        yield Path(container.root)
        return
    try:
        ref = images.lookup(store, text, session.config.registry)
    except UsageError:
        raise NotFoundError(f"no container or image named {text!r} in the store") from None
    image = images.load(store, ref)
    import tempfile

    try:
        scratch = Path(tempfile.mkdtemp(prefix="ucore-mpi-check-"))
    except OSError as exc:
        raise StoreError(
            f"mpi check: no scratch directory to unpack {text} into in {tempfile.gettempdir()}"
            f" ({exc.strerror}); check a container made from it, or set TMPDIR"
        ) from None
    try:
        (scratch / "ROOT").mkdir(mode=0o755)
        with store.shared_lock("gc"):
            root = session.hook.ucore_unpack(image=image, dest=scratch / "ROOT", session=session)
        if root is None:
            raise IntegrityError("no plugin could unpack the image (is 'unpack' blocked?)")
        yield Path(root)
    finally:
        remove_tree(scratch)


def mode(session: Session) -> str:
    """``--mpi``, else ``UCORE_MPI_BIND``, else the ``[mpi] bind`` setting, else none."""
    chosen = getattr(session.config.options, "mpi", None)
    if chosen is None:
        chosen = os.environ.get("UCORE_MPI_BIND") or session.config.section("mpi").get("bind")
    chosen = chosen or "none"
    if chosen not in MODES:
        raise UsageError(f"mpi bind {chosen!r}: expected one of {', '.join(MODES)}")
    return chosen


def prepare(container: Container, spec: RunSpec, session: Session) -> Optional[Preparation]:
    """``run --mpi=host``'s bindings; None without it."""
    if mode(session) != "host":
        return None
    from ucore_gpu import mpibind, mpiinfo

    host_tree = _host_tree(session)
    image_tree = mpiinfo.Tree(container.root)
    return mpibind.bindings(
        host_tree, mpiinfo.side(host_tree), image_tree, mpiinfo.side(image_tree), dict(spec.env)
    )
