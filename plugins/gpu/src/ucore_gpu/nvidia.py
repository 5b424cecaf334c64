"""The ``nvidia.com/gpu`` device provider: discovery, selection, the image's requirements,
and the bindings, for whichever engine runs the container."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from ucore_gpu import bind, require, settings
from ucore_gpu.discover import Discovery, discover
from ucore_gpu.selection import select

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, DeviceRequest, RunSpec


class NvidiaGpus:
    kind: ClassVar[str] = "nvidia.com/gpu"
    aliases: ClassVar[tuple[str, ...]] = ("gpu", "nvidia")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = settings.load(session)

    @cached_property
    def found(self) -> Discovery:
        return discover(self.settings)

    def prepare(
        self, container: Container, spec: RunSpec, requests: Sequence[DeviceRequest]
    ) -> Optional[dict[str, Any]]:
        inventory = self.found.inventory
        gpus, how = select(inventory, requests, os.environ)
        if not gpus:
            return None
        env = dict(spec.env)
        if not getattr(self.session.config.options, "no_require_cuda", False):
            require.check(env, inventory.driver, lambda: require.driver_cuda(self._libcuda()))
        if self._libcuda() is None:
            from ucore.log import get_logger

            get_logger(__name__).warning(
                f"no libcuda.so.{inventory.driver or '<driver version>'} found on this host"
                f" ({inventory.source}): CUDA programs will not start; see 'ucore info --devices'"
            )
        result = bind.bindings(self.settings, inventory, gpus, env)
        result["report"] = {
            "source": inventory.source,
            "driver": inventory.driver,
            "selected_by": how,
            "gpus": [g.uuid or str(g.number) for g in gpus],
            "devices": [d.target for d in result["devices"]],
            "libraries": sorted(os.path.basename(p) for p in inventory.libraries),
            "utilities": sorted(os.path.basename(p) for p in inventory.binaries),
        }
        return result

    def report(self, requests: Sequence[DeviceRequest]) -> dict[str, Any]:
        from ucore.values.errors import DeviceError

        try:
            found = self.found
        except DeviceError as exc:  # a damaged CDI spec: the report says so, runs refuse
            return {"error": str(exc), "summary": [f"discovery failed: {exc}"]}
        inv = found.inventory
        lines = [f"source {name}: {why}" for name, why in found.sources]
        data: dict[str, Any] = {
            "sources": [{"source": n, "status": w} for n, w in found.sources],
            "chosen": inv.source if inv.gpus else None,
            "driver": inv.driver or None,
            "gpus": [
                {
                    "index": g.number,
                    "uuid": g.uuid,
                    "pci": g.pci,
                    "model": g.model,
                    "nodes": list(g.nodes),
                    "names": list(g.names),
                }
                for g in inv.gpus
            ],
            "notes": list(inv.notes),
        }
        for g in inv.gpus:
            label = f"GPU {g.number}" if g.number >= 0 else f"MIG {g.uuid or ','.join(g.names)}"
            lines.append(
                f"{label}: {g.model or 'model unknown'} {g.uuid} {g.pci} {' '.join(g.nodes)}"
            )
        try:
            gpus, how = select(inv, requests, os.environ)
            binding = bind.bindings(self.settings, inv, gpus, {}) if gpus else None
        except Exception as exc:  # noqa: BLE001 - a report explains, it does not fail
            data["request_error"] = str(exc)
            lines.append(f"request: {exc}")
            binding = None
        else:
            data["selected_by"] = how
            lines.append(f"request ({how}): {len(gpus)} GPU(s)")
        if binding is not None:
            data["would_bind"] = {
                "devices": [d.target for d in binding["devices"]],
                "mounts": [f"{m.source} -> {m.target}" for m in binding["mounts"]],
                "env": binding["env"],
            }
            lines.append("devices: " + " ".join(d.target for d in binding["devices"]))
            lines.append(
                f"libraries ({len(inv.libraries)}) and utilities ({len(inv.binaries)})"
                f" in {bind.PRIVATE}, read-only"
            )
            for name in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
                lines.append(f"{name}={binding['env'].get(name, '')}")
        lines += [f"note: {n}" for n in inv.notes]
        data["summary"] = lines
        return data

    def _libcuda(self) -> Optional[str]:
        for path in self.found.inventory.libraries:
            if os.path.basename(path).startswith("libcuda.so."):
                return self.settings.host(path)
        return None
