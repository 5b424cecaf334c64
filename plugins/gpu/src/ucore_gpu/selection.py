"""Which GPUs a request selects.

``--gpus`` and ``--device nvidia.com/gpu=…`` name them: ``all``, ``none``, ``count=N`` (the
first N, Docker's ``--gpus N``), or a list of indices (nvidia-smi's, PCI bus order), UUIDs
(``GPU-…``, a unique prefix is enough, as for CUDA), MIG instances (``MIG-…`` or
``GPU:GI:CI``) and CDI device names. A request without a selection (``setup --nvidia``,
``--device nvidia.com/gpu``) takes the batch job's allocation: ``SLURM_STEP_GPUS``, else
``SLURM_JOB_GPUS`` (both host indices), else ``CUDA_VISIBLE_DEVICES``, else
``GPU_DEVICE_ORDINAL``; and all GPUs outside a job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ucore.values.errors import DeviceError, UsageError
from ucore.values.model import DeviceRequest
from ucore_gpu.inventory import Gpu, Inventory, number

#: Where a batch job's allocation is read from, in this order.
ALLOCATION = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")


def select(
    inventory: Inventory, requests: Sequence[DeviceRequest], environ: Mapping[str, str]
) -> tuple[list[Gpu], str]:
    """The selected GPUs (index order, each once) and where the selection came from. An
    explicit ``none`` among the requests wins over the others (``--device nvidia.com/gpu=all
    --gpus none`` binds nothing): the narrower reading of a contradiction."""
    chosen: dict[int, Gpu] = {}
    how = []
    if any(r.selection == "none" for r in requests):
        return [], next(r.origin or "none" for r in requests if r.selection == "none")
    for request in requests:
        text, origin = request.selection, request.origin or f"--device {request.kind}"
        if not text:
            text, origin = _allocation(environ)
        how.append(origin)
        if text == "none":
            continue
        for gpu in _pick(inventory, text, origin):
            chosen.setdefault(id(gpu), gpu)
    gpus = list(chosen.values())
    gpus.sort(key=lambda g: (g.number < 0, g.number))
    return gpus, ", ".join(how)


def _allocation(environ: Mapping[str, str]) -> tuple[str, str]:
    for var in ALLOCATION:
        if var in environ:
            value = environ[var].strip()
            if var == "CUDA_VISIBLE_DEVICES":  # as CUDA reads it: up to the first bad entry
                value = ",".join(_while_valid(value.split(",")))
            if not value or value == "NoDevFiles":
                return "none", f"{var}={environ[var].strip()!r} (the job's allocation)"
            return value, f"{var}={value} (the job's allocation)"
    return "all", "all GPUs (no allocation in the environment)"


def _while_valid(tokens: Sequence[str]) -> list[str]:
    """CUDA's reading of ``CUDA_VISIBLE_DEVICES``: entries up to the first that names no
    device (``-1``, the usual way to hide every GPU, hides them all)."""
    out = []
    for raw in tokens:
        token = raw.strip()
        if not (token.isascii() and token.isdigit()) and not token.startswith(("GPU-", "MIG-")):
            break
        out.append(token)
    return out


def _pick(inventory: Inventory, text: str, origin: str) -> list[Gpu]:
    whole = [g for g in inventory.gpus if g.number >= 0]
    if not inventory.gpus:
        why = "; ".join(inventory.notes) or "none found"
        raise DeviceError(f"{origin}: no NVIDIA GPU on this host ({why})")
    if text == "all":
        return whole
    if text.startswith("count="):
        n = number(text[len("count=") :])
        if n is None or n < 1:
            raise UsageError(f"{origin}: expected a number of GPUs after count=")
        if n > len(whole):
            raise DeviceError(f"{origin}: more GPUs asked than this host has ({len(whole)})")
        return whole[:n]
    picked = []
    for raw in text.split(","):
        token = raw.strip()
        if not token:
            raise UsageError(f"{origin}: an empty entry in the GPU list")
        picked.append(_one(inventory, whole, token, origin))
    return picked


def _one(inventory: Inventory, whole: list[Gpu], token: str, origin: str) -> Gpu:
    index = number(token)
    if index is not None:
        if index < len(whole):
            return whole[index]
        raise DeviceError(f"{origin}: no GPU {index} on this host ({_known(whole)})")
    named = [g for g in inventory.gpus if token in g.names]
    if named:
        return named[0]
    if token.startswith(("GPU-", "MIG-")):
        matches = [g for g in inventory.gpus if g.uuid and g.uuid.startswith(token)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"{origin}: {token} is the start of several GPUs' UUIDs")
        raise DeviceError(f"{origin}: no GPU with UUID {token} on this host ({_known(whole)})")
    raise UsageError(f"{origin}: {token!r} is not a GPU index, UUID or device name")


def _known(whole: list[Gpu]) -> str:
    if not whole:
        return "it has none"
    return f"GPUs 0-{len(whole) - 1}" if len(whole) > 1 else "GPU 0 only"
