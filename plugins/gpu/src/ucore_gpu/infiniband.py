"""The ``infiniband`` device provider: InfiniBand / RoCE HCAs and SR-IOV virtual functions.

An HCA is what ``/sys/class/infiniband`` lists; a virtual function is an HCA of its own, so a
request names HCAs (``mlx5_2``) or their PCI addresses (``0000:3b:00.2``, or ``3b:00.2``).
Its user-space nodes (``/dev/infiniband/uverbsN`` and ``umadN``, found through
``/sys/class/infiniband_verbs`` and ``infiniband_mad``) are bound with ``rdma_cm``, and the
fabric variables of UCX, Open MPI and NCCL name the selection. Without a selection, the job's
own (``UCX_NET_DEVICES``, then ``NCCL_IB_HCA``) is taken, else every HCA. With
``--infiniband-libs`` the host's verbs libraries and provider drivers come too, for images
without rdma-core.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Optional

from ucore.values.errors import DeviceError, UsageError
from ucore.values.model import DeviceNode, Mount
from ucore_gpu import files
from ucore_gpu import settings as gpu_settings
from ucore_gpu.settings import Settings

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, DeviceRequest, RunSpec

PRIVATE = "/usr/local/ucore-rdma"
#: The verbs user space: libraries, and the providers' directory and configuration.
VERBS_LIBS = ("libibverbs.so.1", "librdmacm.so.1", "libibumad.so.3", "libmlx5.so.1", "libefa.so.1")
VERBS_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/aarch64-linux-gnu")


class Hca(NamedTuple):
    name: str
    pci: str
    nodes: tuple[str, ...]
    ports: tuple[str, ...]


def hcas(settings: Settings) -> list[Hca]:
    base = settings.host("/sys/class/infiniband")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    owners: dict[str, list[str]] = {}
    for klass, prefix in (("infiniband_verbs", "uverbs"), ("infiniband_mad", "umad")):
        directory = settings.host(f"/sys/class/{klass}")
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            if not entry.startswith(prefix) or not entry[len(prefix) :].isdigit():
                continue
            owner = _read(os.path.join(directory, entry, "ibdev"))
            if owner:
                owners.setdefault(owner, []).append(f"/dev/infiniband/{entry}")
    out = []
    for name in names:
        device = os.path.realpath(os.path.join(base, name, "device"))
        pci = os.path.basename(device) if os.path.isdir(device) else ""
        nodes = tuple(n for n in owners.get(name, ()) if os.path.exists(settings.host(n)))
        try:
            ports = tuple(
                sorted(p for p in os.listdir(os.path.join(base, name, "ports")) if p.isdigit())
            )
        except OSError:
            ports = ("1",)
        out.append(Hca(name, pci, nodes, ports))
    return out


def _read(path: str) -> str:
    return (files.read_text(path, 256) or "").strip()


def select(
    found: Sequence[Hca], requests: Sequence[DeviceRequest], environ: Mapping[str, str]
) -> tuple[list[Hca], str]:
    chosen: dict[str, Hca] = {}
    how = []
    for request in requests:
        text, origin = request.selection, request.origin or "--device infiniband"
        if not text:
            text, origin = _allocation(environ)
        how.append(origin)
        if text == "none":
            continue
        if not found:
            raise DeviceError(f"{origin}: no InfiniBand HCA on this host (/sys/class/infiniband)")
        if text == "all":
            chosen.update((h.name, h) for h in found)
            continue
        for token in text.split(","):
            hca = _one(found, token.strip(), origin)
            chosen.setdefault(hca.name, hca)
    return [h for h in found if h.name in chosen], ", ".join(how)


def _allocation(environ: Mapping[str, str]) -> tuple[str, str]:
    ucx = environ.get("UCX_NET_DEVICES", "").strip()
    if ucx and ucx != "all":
        names = [
            d.split(":")[0]
            for d in ucx.split(",")
            if d.startswith(("mlx", "ib", "hfi", "bnxt", "irdma", "efa", "qedr", "rxe"))
        ]
        if names:
            return ",".join(names), f"UCX_NET_DEVICES={ucx} (the job's)"
    nccl = environ.get("NCCL_IB_HCA", "").strip().lstrip("=")
    if nccl and not nccl.startswith("^"):
        return ",".join(d.split(":")[0] for d in nccl.split(",")), f"NCCL_IB_HCA={nccl} (the job's)"
    return "all", "all HCAs (no selection in the environment)"


def _one(found: Sequence[Hca], token: str, origin: str) -> Hca:
    if not token:
        raise UsageError(f"{origin}: an empty entry in the HCA list")
    pci = token if token.count(":") == 2 else f"0000:{token}" if token.count(":") == 1 else None
    for hca in found:
        if token == hca.name or (pci is not None and pci == hca.pci):
            return hca
    names = ", ".join(f"{h.name} ({h.pci})" for h in found)
    raise DeviceError(f"{origin}: no HCA {token} on this host (it has {names})")


class InfiniBand:
    kind: ClassVar[str] = "infiniband"
    aliases: ClassVar[tuple[str, ...]] = ("ib", "rdma")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = gpu_settings.load(session)

    @cached_property
    def found(self) -> list[Hca]:
        return hcas(self.settings)

    def prepare(
        self, container: Container, spec: RunSpec, requests: Sequence[DeviceRequest]
    ) -> Optional[dict[str, Any]]:
        chosen, how = select(self.found, requests, os.environ)
        if not chosen:
            return None
        result = self.bindings(chosen, dict(spec.env), spec.mounts)
        result["report"] = {
            "selected_by": how,
            "hcas": [f"{h.name} {h.pci}" for h in chosen],
            "devices": [d.target for d in result["devices"]],
        }
        return result

    def bindings(
        self, chosen: Sequence[Hca], env: Mapping[str, str], mounts: Sequence[Mount]
    ) -> dict[str, Any]:
        s = self.settings
        nodes = [n for h in chosen for n in h.nodes]
        if os.path.exists(s.host("/dev/infiniband/rdma_cm")):
            nodes.append("/dev/infiniband/rdma_cm")
        devices = [DeviceNode(s.host(n), n) for n in nodes]
        binds: list[Mount] = []
        if not any(m.target == "/sys" for m in mounts) and not s.synthetic:
            binds.append(Mount("/sys", "/sys", True, True))  # the verbs library reads it
        added = {
            "UCX_NET_DEVICES": ",".join(f"{h.name}:{p}" for h in chosen for p in h.ports),
            "OMPI_MCA_btl_openib_if_include": ",".join(h.name for h in chosen),
            "NCCL_IB_HCA": "=" + ",".join(h.name for h in chosen),
        }
        if getattr(self.session.config.options, "infiniband_libs", False):
            binds += self._libraries(added, env)
        return {"mounts": binds, "devices": devices, "env": added}

    def _libraries(self, added: dict[str, str], env: Mapping[str, str]) -> list[Mount]:
        """The host's verbs user space in a private directory: libraries and provider drivers
        on the library path (libibverbs falls back to loading a provider by its bare name),
        and each ``/etc/libibverbs.d`` entry at its place, as a transient bind."""
        s = self.settings
        out = []
        for d in VERBS_DIRS:
            for name in VERBS_LIBS:
                if os.path.isfile(s.host(f"{d}/{name}")):
                    out.append(
                        Mount(
                            os.path.realpath(s.host(f"{d}/{name}")),
                            f"{PRIVATE}/lib/{name}",
                            True,
                            True,
                        )
                    )
            try:
                providers = sorted(os.listdir(s.host(f"{d}/libibverbs")))
            except OSError:
                continue
            for name in providers:
                out.append(
                    Mount(s.host(f"{d}/libibverbs/{name}"), f"{PRIVATE}/lib/{name}", True, True)
                )
        try:
            drivers = sorted(os.listdir(s.host("/etc/libibverbs.d")))
        except OSError:
            drivers = []
        out += [
            Mount(s.host(f"/etc/libibverbs.d/{n}"), f"/etc/libibverbs.d/{n}", True, True)
            for n in drivers
        ]
        if out:
            parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
            added["LD_LIBRARY_PATH"] = ":".join([*parts, f"{PRIVATE}/lib"])
        return out

    def report(self, requests: Sequence[DeviceRequest]) -> dict[str, Any]:
        lines = [
            f"HCA {h.name}: PCI {h.pci or '?'}, ports {','.join(h.ports)},"
            f" {' '.join(h.nodes) or 'no user-space nodes'}"
            for h in self.found
        ]
        if not self.found:
            lines.append("no HCA (/sys/class/infiniband is empty or missing)")
        data: dict[str, Any] = {"hcas": [h._asdict() for h in self.found]}
        try:
            chosen, how = select(self.found, requests, os.environ)
        except Exception as exc:  # noqa: BLE001 - a report explains, it does not fail
            data["request_error"] = str(exc)
            lines.append(f"request: {exc}")
        else:
            binding = self.bindings(chosen, {}, []) if chosen else {"devices": [], "env": {}}
            data["would_bind"] = {
                "devices": [d.target for d in binding["devices"]],
                "env": binding["env"],
            }
            lines.append(
                f"request ({how}): " + (" ".join(d.target for d in binding["devices"]) or "nothing")
            )
        data["summary"] = lines
        return data
