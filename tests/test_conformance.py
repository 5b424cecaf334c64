"""Engine conformance for this repository's engines: the suite third-party engines run too.

:class:`~ucore.testing.conformance.EngineConformance` holds the behaviours; each engine here is
a subclass, as an engine plugin's own test is. The Fakechroot engines run the Debian image (they
need its glibc loader; ``conftest.py`` serves it as ``ucore_glibc_image``), are marked
``fmodes`` (CI runs them on one Python) and declare what Fakechroot cannot do.

CI runs this as root and again as the unprivileged user ucore-test (tox env ``unpriv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import pytest

from ucore.testing.conformance import EngineConformance


class TestProot(EngineConformance):
    engine = "proot"


class TestProotNoSeccomp(EngineConformance):
    engine = "proot-noseccomp"


class TestRunc(EngineConformance):
    engine = "runc"


class TestCrun(EngineConformance):
    engine = "crun"


#: What a Fakechroot engine (F1-F4) cannot do; README "Fakechroot engines" lists them.
NESTED_VOLUMES = (
    "Fakechroot places a volume at another path as a link in the root, and cannot place one"
    " inside another volume (the host's directory)"
)
RUNTIME_LINKS = (
    "a link the container makes with an absolute target records the host path (libfakechroot's"
    " symlink); F4 makes such links relative after each run, F1-F3 keep what libfakechroot wrote"
)


class FakechrootConformance(EngineConformance):
    image = "glibc"
    limits: ClassVar[Mapping[str, str]] = {
        "nested volumes": NESTED_VOLUMES,
        "links made at run time": RUNTIME_LINKS,
    }
    pytestmark = pytest.mark.fmodes


class TestFakechrootF1(FakechrootConformance):
    engine = "fakechroot"


class TestFakechrootF2(FakechrootConformance):
    engine = "fakechroot-f2"


class TestFakechrootF3(FakechrootConformance):
    engine = "fakechroot-f3"


class TestFakechrootF4(FakechrootConformance):
    engine = "fakechroot-f4"
    limits: ClassVar[Mapping[str, str]] = {"nested volumes": NESTED_VOLUMES}
