"""``NVIDIA_REQUIRE_*``: what an image says it needs of the driver, checked before the run.

NVIDIA's CUDA images declare ``NVIDIA_REQUIRE_CUDA=cuda>=12.4 brand=tesla,driver>=470,…``.
The rules are NVIDIA's: within a variable, space-separated alternatives are ORed and the
comma-separated constraints of one alternative ANDed; several ``NVIDIA_REQUIRE_*`` variables
are ANDed; ``NVIDIA_DISABLE_REQUIRE`` turns the check off. A constraint on something ucore
cannot know (a GPU's brand or architecture) fails its alternative, so the outcome only ever
errs towards the explicit ``cuda``/``driver`` terms. The driver's CUDA version is asked of its
own ``libcuda`` (``cuDriverGetVersion``), loaded only when an image has such a requirement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Callable, Optional

from ucore.values.errors import DeviceError

_TERM = re.compile(r"^(cuda|driver|arch|brand)\s*(>=|<=|==|=|>|<)\s*([A-Za-z0-9._-]+)$")


def requirements(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """The image's ``NVIDIA_REQUIRE_*`` variables (name, value), unless disabled."""
    if env.get("NVIDIA_DISABLE_REQUIRE", "").lower() in ("1", "true", "yes"):
        return []
    return sorted((k, v) for k, v in env.items() if k.startswith("NVIDIA_REQUIRE_") and v.strip())


def check(
    env: Mapping[str, str], driver: str, cuda: Callable[[], Optional[tuple[int, int]]]
) -> None:
    """Raise a :class:`DeviceError` naming the image's need and the driver's offer when no
    alternative of a requirement holds."""
    cuda_version: list[Optional[tuple[int, int]]] = []

    def value(kind: str) -> Optional[tuple[int, ...]]:
        if kind == "driver":
            return _version(driver)
        if kind == "cuda":
            if not cuda_version:
                cuda_version.append(cuda())
            return cuda_version[0]
        return None

    for name, text in requirements(env):
        alternatives = text.split()
        if not any(_holds(alt, value) for alt in alternatives):
            have = value("cuda")
            offer = f"CUDA {have[0]}.{have[1]}" if have else "an unknown CUDA version"
            raise DeviceError(
                f"the image needs {name}={text}; this host's driver {driver} offers {offer}"
                " (--no-require-cuda runs it anyway)"
            )


def _holds(alternative: str, value: Callable[[str], Optional[tuple[int, ...]]]) -> bool:
    for term in alternative.split(","):
        m = _TERM.match(term.strip())
        if m is None:
            return False
        kind, op, wanted = m.groups()
        have = value(kind)
        want = _version(wanted)
        if have is None or want is None or not _compare(have, op, want):
            return False
    return True


def _compare(have: tuple[int, ...], op: str, want: tuple[int, ...]) -> bool:
    n = max(len(have), len(want))
    a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
    return {
        ">=": a >= b,
        "<=": a <= b,
        ">": a > b,
        "<": a < b,
        "=": a == b,
        "==": a == b,
    }[op]


def _version(text: str) -> Optional[tuple[int, ...]]:
    parts = text.split(".")
    if not all(p.isdigit() and len(p) < 10 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def driver_cuda(libcuda: Optional[str]) -> Optional[tuple[int, int]]:
    """The CUDA version the driver library at ``libcuda`` supports, or None."""
    if libcuda is None:
        return None
    import ctypes

    try:
        lib = ctypes.CDLL(libcuda)
        number = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(number)) != 0 or number.value <= 0:
            return None
    except (OSError, AttributeError):
        return None
    return number.value // 1000, (number.value % 1000) // 10
