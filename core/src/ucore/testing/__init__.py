"""Test support for ucore and its plugins, and a pytest plugin for engine authors.

The modules: :mod:`~ucore.testing.registry` (a real registry server), :mod:`~ucore.testing.images`
and :mod:`~ucore.testing.hostimage` (images built from scratch), :mod:`~ucore.testing.push`,
:mod:`~ucore.testing.cli` (the ``ucore`` command against a private store),
:mod:`~ucore.testing.events` (recording events) and :mod:`~ucore.testing.conformance` (the engine
conformance suite, :class:`~ucore.testing.conformance.EngineConformance`).

As a pytest plugin this package gives the fixtures of :mod:`ucore.testing.fixtures`. It is off
unless a project asks for it, so that installing ucore changes no other project's tests: with
``-p ucore.testing`` on the command line or in ``addopts``, or ``ucore_testing = true`` in the
pytest configuration (read by the ``pytest11`` entry point, :mod:`ucore.pytest_optin`). An
engine plugin's whole conformance test is then::

    from ucore.testing.conformance import EngineConformance

    class TestMyEngine(EngineConformance):
        engine = "mine"
"""

#: What pytest loads with this package: named, not imported, so that the modules above (the
#: demo's, say) never import pytest.
pytest_plugins = ("ucore.testing.fixtures",)
