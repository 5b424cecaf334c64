"""Builtin plugin "execute": which engine runs a container, and running it.

Engines come from the ``ucore_register_engines`` hook. Each has a ``name``, udocker-style
``aliases`` (``P1``, ``F3``, ``R1``, …) and a ``preference``. A container runs with the engine
recorded in it (``ucore setup --engine/--execmode``); a container with none gets the first
engine, by ascending ``preference`` then name, whose probe finds it usable on this host, and
that choice is recorded so later runs behave the same. The order engine plugins use:

==========  =====================  ============================================
preference  engines                why there
==========  =====================  ============================================
10-19       runc, crun (R1-R3)     native speed, real user namespaces
20-29       singularity (S1)       native speed where a site installed it
30-39       fakechroot (F1-F4)     fast, but needs per-image preparation
50          proot (P1)             works almost anywhere (ptrace)
60          proot-noseccomp (P2)   the same, slower, for kernels where P1 fails
==========  =====================  ============================================

Probes run at most once per session (``ucore info`` probes every engine; a run probes only
until one is usable). An engine may also offer ``details() -> dict[str, str]`` for ``info``,
and ``refuses(container) -> str | None`` where whether it can run depends on the image, not
only on the host (Fakechroot needs a glibc the library fits): the choice then moves on, and a
container set to that engine gets the reason.

``ucore_execute`` here is ``trylast``: a plugin that wraps runs (timing, accounting) and
returns an exit status first takes over.
"""

from __future__ import annotations

import contextlib
import errno
import weakref
from typing import TYPE_CHECKING, Any, Optional

from ucore.plugins.hookspecs import hookimpl
from ucore.plugins.registration import Registry
from ucore.values.errors import PluginError, StoreError, UsageError

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, RunSpec

#: udocker's execution modes and engine names -> the distribution that provides them, so a
#: name whose engine is not installed gets a message saying what to install.
PROVIDERS: dict[str, str] = {
    **dict.fromkeys(("P1", "P2", "proot", "proot-noseccomp"), "ucore-proot"),
    **dict.fromkeys(("F1", "F2", "F3", "F4", "fakechroot"), "ucore-fakechroot"),
    **dict.fromkeys(("R1", "R2", "R3", "runc", "crun"), "ucore-runc"),
    **dict.fromkeys(("S1", "singularity", "apptainer"), "ucore-singularity"),
}
#: ``setup --engine auto``: forget the recorded engine and choose again at the next run.
AUTO = "auto"

_by_session: weakref.WeakKeyDictionary[Session, Engines] = weakref.WeakKeyDictionary()


class Engines:
    """The engines registered in one session, their aliases and their (cached) probes."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.registry = Registry.collect(session.pm, "ucore_register_engines", "engine")
        self._aliases: dict[str, str] = {}
        for name, cls in self.registry.items():
            for alias in getattr(cls, "aliases", ()):
                self._aliases.setdefault(alias.upper(), name)
        self._instances: dict[str, Any] = {}
        self._probes: dict[str, Optional[str]] = {}

    def names(self) -> list[str]:
        """Every engine, in the order a container without one tries them."""
        return sorted(
            self.registry, key=lambda n: (getattr(self.registry[n], "preference", 100), n)
        )

    def canonical(self, text: str) -> str:
        """The engine a name or alias (case-insensitive) means; a clear error when the plugin
        providing it is not installed."""
        if text in self.registry:
            return text
        name = self._aliases.get(text.upper())
        if name is not None:
            return name
        known = {k.upper(): v for k, v in PROVIDERS.items()}
        if text.upper() in known:
            raise PluginError(
                f"execution engine {text!r} is provided by the {known[text.upper()]} plugin,"
                f" which is not installed (pip install {known[text.upper()]})"
            )
        choices = ", ".join([*self.names(), *sorted(self._aliases)]) or "none installed"
        raise UsageError(f"unknown execution engine {text!r} (known here: {choices})")

    def engine(self, name: str) -> Any:
        if name not in self._instances:
            self._instances[name] = self.registry[name](self.session)
        return self._instances[name]

    def probe(self, name: str) -> Optional[str]:
        """Why engine ``name`` cannot run here (one line), or None; asked once per session."""
        if name not in self._probes:
            try:
                self._probes[name] = self.engine(name).probe()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    from ucore.values.errors import store_error

                    # the disk's fault, not the engine's: no other engine would fare better
                    raise store_error(exc, f"probing engine {name}") from None
                self._probes[name] = f"its probe failed: {type(exc).__name__}: {exc}"
        return self._probes[name]

    def refusal(self, name: str, container: Container) -> Optional[str]:
        """Why engine ``name``, usable on this host, cannot run ``container``'s image."""
        refuses = getattr(self.engine(name), "refuses", None)
        return refuses(container) if refuses is not None else None

    def choose(self, container: Container) -> str:
        """The engine for ``container``: its recorded one (which must work here), else the
        first usable one, which is then recorded in the container."""
        if container.engine:
            name = self.canonical(container.engine)
            why = self.probe(name) or self.refusal(name, container)
            if why is not None:
                raise PluginError(
                    f"engine {name} (set for this container) cannot run here: {why};"
                    " choose another with 'ucore setup --engine=NAME CONTAINER' (see 'ucore info')"
                )
            return name
        reasons = []
        for name in self.names():
            why = self.probe(name) or self.refusal(name, container)
            if why is None:
                if container.location is None:
                    from ucore.storage import containers

                    # best effort: a container shared read-only still runs
                    with contextlib.suppress(StoreError):
                        containers.update(self.session.store, container, engine=name)
                return name
            reasons.append(f"{name}: {why}")
        if not reasons:
            raise PluginError("no execution engine is installed (pip install ucore-proot)")
        raise PluginError("no execution engine can run here (" + "; ".join(reasons) + ")")


def engines(session: Session) -> Engines:
    """The session's engines (built once per session)."""
    found = _by_session.get(session)
    if found is None:
        found = _by_session[session] = Engines(session)
    return found


@hookimpl(trylast=True)
def ucore_execute(container: Container, spec: RunSpec, session: Session) -> Optional[int]:
    known = engines(session)
    name = known.choose(container)
    return int(known.engine(name).run(container, spec))
