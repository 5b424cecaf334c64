"""Hook implementations of ucore-gpu: the ``nvidia.com/gpu`` and ``infiniband`` device
providers, the flags users know from Docker and udocker (``--gpus``, ``setup --nvidia``), and
the host's MPI: ``ucore mpi check`` and ``run --mpi=host``.

Kept small: this module is imported by every ``ucore`` command, the providers only when a run
asks for devices.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Optional

from ucore.plugins.hookspecs import hookimpl
from ucore.values.model import DeviceRequest

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, Preparation, RunSpec

KIND = "nvidia.com/gpu"


class _Gpus(argparse.Action):
    """``--gpus all|N|device=0,2|device=GPU-…|none``, Docker's spelling, as a device
    request (Docker also accepts the ``device=`` part quoted, ``'"device=0,2"'``)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        from ucore_gpu.inventory import number

        text = str(values).strip().strip('"').strip("'")
        if text.startswith("device="):
            selection = text[len("device=") :].strip('"')
        elif (count := number(text)) is not None:
            if count < 1:
                parser.error("--gpus: a count must be at least 1 (or none)")
            selection = f"count={text}"
        elif text in ("all", "none"):
            selection = text
        else:
            parser.error(f"--gpus {values}: expected all, none, N or device=LIST")
        if not selection or any(c.isspace() or c == "\0" for c in selection):
            parser.error(f"--gpus {values}: expected all, none, N or device=LIST")
        asked = [d for d in getattr(namespace, "device", None) or [] if not _is_gpu(d)]
        asked.append(DeviceRequest(KIND, selection, f"--gpus {values}"))
        namespace.device = asked


def _is_gpu(item: Any) -> bool:
    return isinstance(item, DeviceRequest) and item.kind == KIND


@hookimpl
def ucore_addoption(
    parser: argparse.ArgumentParser, subcommands: dict[str, Any], commands: Any
) -> None:
    for name in ("run", "info"):
        sub = subcommands.get(name)
        if sub is not None:
            sub.add_argument(
                "--gpus",
                action=_Gpus,
                metavar="all|N|device=LIST|none",
                help="NVIDIA GPUs to bind (Docker's spelling; ucore-gpu)",
            )
    run = subcommands.get("run")
    if run is not None:
        run.add_argument(
            "--no-require-cuda",
            action="store_true",
            help="run even if the image's NVIDIA_REQUIRE_CUDA is not met (ucore-gpu)",
        )
        run.add_argument(
            "--infiniband-libs",
            action="store_true",
            help="with --device infiniband: also bind the host's verbs libraries (ucore-gpu)",
        )
        from ucore_gpu import mpicli

        mpicli.add_run_option(run)
    setup = subcommands.get("setup")
    if setup is not None:
        setup.add_argument(
            "--nvidia",
            dest="device",
            action="append_const",
            const=KIND,
            help="bind the NVIDIA GPUs at every run, from the host's driver (ucore-gpu)",
        )
    # The core builds every command's parser only for a command it does not know (``mpi``)
    # or for help; a ``ucore run`` does not pay for this one.
    if commands is not None and {"pull", "run", "version"} <= subcommands.keys():
        from ucore_gpu import mpicli

        mpicli.add_command(commands)


@hookimpl
def ucore_register_devices(register: Any) -> None:
    from ucore_gpu.infiniband import InfiniBand
    from ucore_gpu.nvidia import NvidiaGpus

    register(NvidiaGpus.kind, NvidiaGpus)
    register(InfiniBand.kind, InfiniBand)


@hookimpl
def ucore_prepare(container: Container, spec: RunSpec, session: Session) -> Optional[Preparation]:
    from ucore_gpu import mpicli

    return mpicli.prepare(container, spec, session)
