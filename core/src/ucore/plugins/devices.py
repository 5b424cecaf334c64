"""Device requests, and the provider plugins that turn them into engine-neutral bindings.

A user asks for devices by kind: ``--device nvidia.com/gpu=0`` (the spelling of the Container
Device Interface, CDI), ``--device infiniband=mlx5_0``, or a plugin's own flag that adds such a
request (``--gpus``). ``ucore setup --device`` records requests on a container, and every run
binds them anew from what the host has then, so a driver update never breaks a container. A
``--device`` that starts with ``/`` is a plain device node (``HOST[:CONT]``), as in Docker.

Providers register through ``ucore_register_devices``: a class with a ``kind``, optional
``aliases`` and, constructed with the session, ``prepare(container, spec, requests)`` returning
what ``ucore_prepare`` returns (``mounts``, ``devices``, ``env``) plus a ``report`` for the run's
record, and ``report(requests)`` for ``ucore info --devices``. Runs without a request load no
provider and pay nothing for them.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol

from ucore.plugins.registration import Registry
from ucore.values.errors import UsageError
from ucore.values.model import DeviceRequest

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, RunSpec


class DeviceProvider(Protocol):
    """A device provider registered through ``ucore_register_devices`` (a class)."""

    #: The request kind it serves (``nvidia.com/gpu``, ``infiniband``).
    kind: ClassVar[str]
    #: Other names a request may use for the kind; optional.
    aliases: ClassVar[tuple[str, ...]]

    def __init__(self, session: Session) -> None: ...

    def prepare(
        self, container: Container, spec: RunSpec, requests: Sequence[DeviceRequest]
    ) -> Optional[Mapping[str, Any]]:
        """What :func:`~ucore.plugins.hookspecs.ucore_prepare` returns (a
        :class:`~ucore.values.model.Preparation`) plus an optional ``report``, a JSON-able record of
        what was bound; raise :class:`~ucore.values.errors.DeviceError` for a device the host
        lacks."""

    def report(self, requests: Sequence[DeviceRequest]) -> Mapping[str, Any]:
        """For ``ucore info --devices``: a JSON-able mapping whose ``summary`` lines are
        printed."""


#: A kind is CDI's ``vendor/class`` or a bare word: letters, digits, ``.``, ``-``, ``_``, ``/``.
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
#: Kinds whose provider ships separately, for a message that says what to install.
KNOWN_KINDS = {"nvidia.com/gpu": "ucore-gpu", "infiniband": "ucore-gpu"}

_by_session: weakref.WeakKeyDictionary[Session, Providers] = weakref.WeakKeyDictionary()


def parse_request(text: str, origin: str) -> DeviceRequest:
    """``KIND[=WHICH]``; ``origin`` names the flag for messages."""
    kind, eq, selection = text.partition("=")
    if not _KIND.match(kind):
        raise UsageError(f"{origin}: expected KIND[=WHICH] (nvidia.com/gpu=0) or a /dev path")
    if eq and not selection:
        raise UsageError(f"{origin}: nothing after '=' (all, none, or which devices)")
    if any(c.isspace() or c == "\0" for c in selection):
        raise UsageError(f"{origin}: whitespace in the device selection {selection!r}")
    return DeviceRequest(kind, selection, origin)


def parse_requests(items: Iterable[str | DeviceRequest]) -> list[DeviceRequest]:
    """``--device`` requests as written, or as a plugin's own flag made them (``--gpus``)."""
    return [r if isinstance(r, DeviceRequest) else parse_request(r, f"--device {r}") for r in items]


class Providers:
    """The device providers registered in one session, by kind and alias."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.registry = Registry.collect(session.pm, "ucore_register_devices", "device provider")
        self._aliases: dict[str, str] = {}
        for name, cls in self.registry.items():
            for alias in getattr(cls, "aliases", ()):
                self._aliases.setdefault(alias, name)
        self._instances: dict[str, Any] = {}

    def canonical(self, request: DeviceRequest) -> DeviceRequest:
        """The request with its kind's registered name; a clear error when no provider is
        installed for it."""
        if request.kind in self.registry:
            return request
        if request.kind in self._aliases:
            return request._replace(kind=self._aliases[request.kind])
        where = request.origin or request.kind
        if request.kind in KNOWN_KINDS:
            from ucore.values.errors import PluginError

            dist = KNOWN_KINDS[request.kind]
            raise PluginError(
                f"{where}: devices of kind {request.kind} come from the {dist} plugin, which is"
                f" not installed (pip install {dist})"
            )
        known = ", ".join(sorted([*self.registry, *self._aliases])) or "none installed"
        raise UsageError(f"{where}: no device provider for kind {request.kind!r} (known: {known})")

    def provider(self, kind: str) -> Any:
        if kind not in self._instances:
            self._instances[kind] = self.registry[kind](self.session)
        return self._instances[kind]


def providers(session: Session) -> Providers:
    """The session's device providers (collected once per session, only when asked)."""
    found = _by_session.get(session)
    if found is None:
        found = _by_session[session] = Providers(session)
    return found


def requests(
    session: Session, recorded: Iterable[str], asked: Iterable[str | DeviceRequest]
) -> tuple[DeviceRequest, ...]:
    """The run's requests: those recorded on the container (``setup --device``), except the
    kinds the command line asks for itself (``--gpus none`` turns off a recorded
    ``setup --nvidia``)."""
    known = providers(session)
    now = [known.canonical(r) for r in parse_requests(asked)]
    kinds = {r.kind for r in now}
    before = [r for r in map(known.canonical, _recorded(recorded)) if r.kind not in kinds]
    return (*before, *now)


def _recorded(texts: Iterable[str]) -> list[DeviceRequest]:
    """The container's recorded requests; one ucore could not have written is a damaged
    record (exit 7), which ``setup --nodevice`` replaces."""
    from ucore.values.errors import StoreError

    out = []
    for text in texts:
        try:
            out.append(parse_request(text, f"setup --device {text}"))
        except UsageError as exc:
            raise StoreError(
                f"the container's recorded devices are damaged ({exc});"
                " 'ucore setup --nodevice' forgets them"
            ) from None
    return out


def check_recordable(session: Session, texts: Iterable[str]) -> list[str]:
    """``setup --device`` values, checked before they are recorded: each names an installed
    provider's kind."""
    out = []
    known = providers(session)
    for text in texts:
        request = known.canonical(parse_request(text, f"setup --device {text}"))
        out.append(request.kind + ("=" + request.selection if request.selection else ""))
    return out
