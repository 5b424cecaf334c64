"""What an execution engine is, and how one is chosen.

An engine is a small class registered through ``ucore_register_engines``; a third-party engine
plugin needs nothing more (the documentation's "Writing an engine plugin" builds one, tested,
from ``docs/examples/engine_tutorial``)::

    class MyEngine:
        name = "mine"
        aliases = ("M1",)      # udocker-style execution-mode names, optional
        preference = 50        # lower is tried first when the user chose none
        hides_devices = False  # True: the container gets its own /dev (only bound nodes)

        def __init__(self, session): self.session = session
        def probe(self) -> str | None: ...   # why it cannot run here, or None
        def refuses(self, container) -> str | None: ...  # optional: this image, here
        def run(self, container, spec) -> int: ...

The core turns every :class:`~ucore.values.model.Mount`, :class:`~ucore.values.model.DeviceNode` and
environment entry into the run spec; the engine only translates the spec into its own terms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional, Protocol

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, RunSpec


class Engine(Protocol):
    """The class an engine plugin registers (``register(Engine.name, EngineClass)``).

    The core builds one instance per session, when a command first needs the engine
    (``ucore info`` builds every one), so the constructor should be cheap.

    Besides the members below, the core calls these when an engine has them, so an engine
    offers only what it needs:

    ``refuses(container) -> str | None``
        Why this engine, usable on this host, cannot run this container's image (Fakechroot
        needs a glibc its library fits); the automatic choice then moves on to the next
        engine, and a container set to this engine fails with the reason.
    ``details() -> dict[str, str]``
        Lines for ``ucore info`` under the engine's row: which binary, which version, why.
    ``release(container, successor)``
        Undo what the engine changed in the container's root (patched files) when
        ``ucore setup`` moves the container to the engine named ``successor`` (None: the
        automatic choice).
    """

    #: The name users give to ``setup --engine`` and that ``ucore info`` and ``ps -m`` show.
    name: ClassVar[str]
    #: Other names, such as udocker's execution modes (``P1``, ``F3``), case-insensitive.
    aliases: ClassVar[tuple[str, ...]]
    #: Order of the automatic choice, lowest first (runc and crun 10-19, Singularity 20-29,
    #: Fakechroot 30-39, PRoot 50-60); an engine without one counts as 100.
    preference: ClassVar[int]
    #: Whether the container gets a /dev of its own, showing only the device nodes in the
    #: spec; False where it sees the host's /dev (device selection then rests on variables).
    hides_devices: ClassVar[bool]

    def __init__(self, session: Session) -> None: ...

    def probe(self) -> Optional[str]:
        """Why this engine cannot run on this host (one line), or None when it can.

        Asked at most once per session, before the engine's first run and by ``ucore info``;
        an exception raised here is reported as the reason, so a broken engine never hides
        the others.
        """

    def run(self, container: Container, spec: RunSpec) -> int:
        """Run ``spec`` in ``container``; return the command's exit status.

        ``spec`` is complete: the image config, the command line and every plugin's
        ``ucore_prepare`` merged, mount targets already resolved inside the root. Start the
        engine's process with :func:`ucore.running.spawn.run`, which passes ``SIGTERM`` and
        ``SIGINT`` on and reports ``128 + N`` after signal ``N``, as every engine does; raise
        a :class:`~ucore.values.errors.UcoreError` for what stops the run before it starts.
        """
