"""Immutable values passed between the core and engine plugins when a container runs.

They are :class:`typing.NamedTuple` records: immutable, typed, compared by value, varied
with ``_replace``, and cheap to define. Every ``ucore run`` defines them before it starts the
container: an attrs class costs about 1.5 ms there (and importing attrs 10 ms), a frozen
dataclass about 0.5 ms, a named tuple a tenth of that (measured). Image and registry values
(digests, references, descriptors), which need validation and are not on that path, are
frozen attrs classes with validators in :mod:`ucore.values.oci`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional, TypedDict

if TYPE_CHECKING:
    from pathlib import Path


class Mount(NamedTuple):
    """A host path made visible in the container (``-v``, sysdirs, GPU libraries).

    ``target`` is absolute inside the container; engines translate it (``proot -b``, runc
    mounts, ``singularity -B``) so device plugins never need to know the engine.
    """

    #: The host path.
    source: str
    #: The absolute path inside the container.
    target: str
    #: Whether the container may only read it (``-v SRC:DST:ro``); engines enforce it.
    readonly: bool = False
    #: Made for this run only (GPU libraries, device files): an engine that must create the
    #: mount point in the root (runc, crun) removes what it made once no run uses the
    #: container, so the container directory is as it was. Volumes and the default binds keep
    #: their mount points, which a store shared read-only relies on.
    transient: bool = False


class DeviceNode(NamedTuple):
    """A host device the container needs (``/dev/nvidia0``, ``/dev/infiniband/uverbs0``)."""

    #: The host's device node.
    path: str
    #: Where the container sees it (None: at ``path``).
    target: Optional[str] = None


class DeviceRequest(NamedTuple):
    """A request for devices a provider plugin binds (``--gpus``, ``--device KIND[=WHICH]``).

    ``kind`` is the provider's name (``nvidia.com/gpu``, ``infiniband``); ``selection`` is
    what the user wrote after ``=`` (``all``, ``0,2``, ``GPU-…``, ``none``), empty for "the
    provider's default" (a batch job's allocation); ``origin`` is how it was asked for, for
    messages (``--gpus device=1``, ``setup --nvidia``).
    """

    kind: str
    selection: str = ""
    origin: str = ""


class Container(NamedTuple):
    """A created container: an unpacked root filesystem plus what it was made from."""

    #: The container's id (32 hexadecimal digits).
    id: str
    #: Its directory in the store (``ROOT`` and ucore's records live there).
    dir: Path
    #: The reference of the image it was made from (``registry/repository:tag``).
    image: str
    #: The image's manifest digest (``sha256:...``), None for an imported root.
    manifest_digest: Optional[str] = None
    #: Its names (``--name``, ``ucore name``).
    names: tuple[str, ...] = ()
    #: The engine it runs with, chosen at its first run or by ``ucore setup --engine``.
    engine: Optional[str] = None
    #: Whether ``rm`` refuses it (``ucore protect``).
    protected: bool = False
    #: When it was created (seconds since the epoch).
    created: float = 0.0
    #: A root directory outside the store (``run --location DIR``); ``dir`` is then scratch.
    location: Optional[Path] = None
    #: Device requests recorded with ``setup --device`` (``--nvidia``), bound at every run.
    devices: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        """The root filesystem (``ROOT``, the name udocker uses)."""
        return self.location if self.location is not None else self.dir / "ROOT"


class RunSpec(NamedTuple):
    """Everything an engine needs to start the container's process, engine-neutral.

    Built by the core from the image config and the command line (Docker's rules), then
    extended with what ``ucore_prepare`` implementations return (GPU libraries, devices).
    """

    #: The command: entrypoint and command after Docker's rules; ``argv[0]`` is looked up
    #: on the container's ``PATH`` by the engine (or its runtime).
    argv: tuple[str, ...]
    #: The container's whole environment, in order; nothing of the host's unless asked.
    env: tuple[tuple[str, str], ...] = ()
    #: The working directory inside the container (made when the user named it).
    cwd: str = "/"
    #: The user to run as inside (``-u``, else the image's ``User``); ``None``: the engine's
    #: default, root emulation (as udocker and Docker do).
    uid: Optional[int] = None
    #: The group to run as inside: the one ``-u`` (or ``User``) names, else the user's
    #: primary group in the image's ``/etc/passwd`` (0 for a uid it lacks); ``None`` exactly
    #: when ``uid`` is None.
    gid: Optional[int] = None
    #: Everything to bind: the default binds, the plugins' and the volumes (``-v``).
    mounts: tuple[Mount, ...] = ()
    #: Device nodes to expose.
    devices: tuple[DeviceNode, ...] = ()
    #: Whether ucore's standard input is a terminal (the engine gives the command one).
    terminal: bool = False
    #: Kernel release to report (``--kernel``), where the engine can fake it.
    kernel: Optional[str] = None
    cpuset: Optional[str] = None
    #: Device requests for the provider plugins (GPUs, HCAs), which turn them into mounts,
    #: device nodes and environment in ``ucore_prepare``; engines never read them.
    requests: tuple[DeviceRequest, ...] = ()


class Preparation(TypedDict, total=False):
    """What a ``ucore_prepare`` implementation returns (every key optional; None for nothing).

    The core checks each entry's type and merges the plugins' answers into the
    :class:`RunSpec` in plugin order: mounts before the command line's ``-v`` (which wins a
    clash of targets), device nodes after the spec's, environment after the image's but never
    over what the user set with ``-e`` or ``--env-file``. An implementation never mutates the
    spec it is given.
    """

    #: Host paths to bind (GPU libraries, a launcher's rendezvous directory).
    mounts: Sequence[Mount]
    #: Device nodes to expose (``/dev/nvidia0``).
    devices: Sequence[DeviceNode]
    #: Variables to set in the container.
    env: Mapping[str, str]
