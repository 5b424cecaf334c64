"""The singularity engine (S1) passes ucore's engine conformance suite with a real runtime.

CI runs it inside a Debian unstable root with Apptainer (tox env ``singularity``, as root and as
ucore-test); where no usable Apptainer or Singularity is found the probe's reason skips it.
"""

from __future__ import annotations

from ucore.testing.conformance import EngineConformance


class TestSingularity(EngineConformance):
    engine = "singularity"
