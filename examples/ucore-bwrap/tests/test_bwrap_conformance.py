"""ucore-bwrap passes ucore's engine conformance suite: this class is the whole test."""

from __future__ import annotations

from ucore.testing.conformance import EngineConformance


class TestBwrap(EngineConformance):
    engine = "bwrap"
