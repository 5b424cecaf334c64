"""Discovery, best source first: CDI specs, then ``nvidia-container-cli``, then ucore's own
scan; each source's outcome is reported (``ucore info --devices``).

The scan always runs first, because it is cheap (a few ``/proc`` reads) and gives what the
other sources lack: the running driver's version, and each GPU's UUID and PCI address.
"""

from __future__ import annotations

from typing import NamedTuple

from ucore_gpu import cdi, containercli, scan
from ucore_gpu.inventory import Inventory
from ucore_gpu.settings import Settings


class Discovery(NamedTuple):
    inventory: Inventory
    #: (source, what it gave or why not), in the order tried.
    sources: tuple[tuple[str, str], ...]


def discover(settings: Settings) -> Discovery:
    base = scan.scan(settings)
    order = ("cdi", "container-cli", "scan") if settings.source == "auto" else (settings.source,)
    sources: list[tuple[str, str]] = []
    chosen = None
    for name in order:
        if chosen is not None:
            sources.append((name, "not consulted"))
            continue
        if name == "cdi":
            found = cdi.discover(settings, base.driver or None)
            if found is None:
                where = ", ".join(settings.cdi_dirs)
                sources.append((name, f"no spec of kind {cdi.KIND} in {where}"))
                continue
            found = _with_identities(found, base)
            why = _summary(found) if found.gpus else "its spec lists no GPU"
        elif name == "container-cli":
            found, why = containercli.discover(settings, base)
            if found is None:
                sources.append((name, why))
                continue
            why = _summary(found)
        else:
            found = base
            why = _summary(found) if found.gpus else "; ".join(found.notes) or "no GPU"
        sources.append((name, why))
        if found.gpus:
            chosen = found
    return Discovery(chosen or base, tuple(sources))


def _with_identities(found: Inventory, base: Inventory) -> Inventory:
    """A CDI spec names GPUs by index or UUID; the driver's files give the rest (PCI
    address, model), matched by device node."""
    by_node = {g.nodes[0]: g for g in base.gpus if g.number >= 0}
    gpus = []
    for g in found.gpus:
        known = by_node.get(g.nodes[0]) if g.number >= 0 else None
        if known is None:
            gpus.append(g)
        else:
            gpus.append(g._replace(uuid=g.uuid or known.uuid, pci=known.pci, model=known.model))
    return found._replace(gpus=tuple(gpus), driver=found.driver or base.driver)


def _summary(found: Inventory) -> str:
    count = sum(1 for g in found.gpus if g.number >= 0)
    mig = len(found.gpus) - count
    driver = f"driver {found.driver}, " if found.driver else ""
    return (
        f"{driver}{count} GPU{'s' if count != 1 else ''}"
        + (f", {mig} MIG instances" if mig else "")
        + f", {len(found.libraries)} libraries, {len(found.binaries)} utilities"
    )
