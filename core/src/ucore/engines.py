"""What an execution engine is, and how one is chosen.

An engine is a small class registered through ``ucore_register_engines``; a third-party engine
plugin needs nothing more (see README "Writing an engine plugin")::

    class MyEngine:
        name = "mine"
        aliases = ("M1",)      # udocker-style execution-mode names, optional
        preference = 50        # lower is tried first when the user chose none
        hides_devices = False  # True: the container gets its own /dev (only bound nodes)

        def __init__(self, session): self.session = session
        def probe(self) -> str | None: ...   # why it cannot run here, or None
        def refuses(self, container) -> str | None: ...  # optional: this image, here
        def run(self, container, spec) -> int: ...

The core turns every :class:`~ucore.model.Mount`, :class:`~ucore.model.DeviceNode` and
environment entry into the run spec; the engine only translates the spec into its own terms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional, Protocol

if TYPE_CHECKING:
    from ucore.model import Container, RunSpec
    from ucore.session import Session


class Engine(Protocol):
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    preference: ClassVar[int]
    #: Whether the container gets a /dev of its own, showing only the device nodes in the
    #: spec; False where it sees the host's /dev (device selection then rests on variables).
    hides_devices: ClassVar[bool]

    def __init__(self, session: Session) -> None: ...

    def probe(self) -> Optional[str]:
        """Why this engine cannot run on this host (one line), or None when it can."""

    def run(self, container: Container, spec: RunSpec) -> int:
        """Run ``spec`` in ``container``; return the command's exit status."""
