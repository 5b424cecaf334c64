"""Settings: defaults, then the config file, then environment variables, then flags.

The config files are INI (a ``[ucore]`` section, and one per plugin): the administrator's
``/etc/ucore.conf`` (``$UCORE_SYSTEM_CONFIG``), where a site sets ``site_store``, its registry
mirror or ``pass_env`` for every user, then the user's ``$UCORE_CONFIG`` or
``$UCORE_DIR/ucore.conf``, whose settings win (the administrator's file may also set ``dir``,
the default store). INI because it needs no dependency on Python 3.9 and sites already write
such files.

=======================  ==========================  ==================================
setting                  environment                 meaning
=======================  ==========================  ==================================
``dir``                  ``UCORE_DIR``               the store (default ``~/.ucore``)
``site_store``           ``UCORE_SITE_STORE``        read-only store of the site's images
``registry``             ``UCORE_REGISTRY``          default registry for short names
``insecure_registries``  ``UCORE_INSECURE``          hosts allowed over plain HTTP
``jobs``                 ``UCORE_JOBS``              parallel blob downloads (4, at most 64)
``platform``             ``UCORE_PLATFORM``          default os/arch[/variant]
``timeout``              ``UCORE_TIMEOUT``           read timeout, seconds (60)
``stall_timeout``        ``UCORE_STALL_TIMEOUT``     wait for a silent registry, in all (90)
``retries``              ``UCORE_RETRIES``           attempts per request (5)
``max_retry_after``      ``UCORE_MAX_RETRY_AFTER``   cap on a 429's Retry-After (60)
``disable_plugins``      ``UCORE_DISABLE_PLUGINS``   comma-separated plugin names
``pass_env``             ``UCORE_PASS_ENV``          host variables every run passes
``launcher_binds``       ``UCORE_LAUNCHER_BINDS``    bind an MPI launcher's directories (yes)
=======================  ==========================  ==================================
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from ucore.values.errors import UsageError
from ucore.values.hub import DOCKER_HUB

if TYPE_CHECKING:
    from ucore.values.oci import Platform

#: The administrator's config file, read before the user's.
SYSTEM_CONFIG = "/etc/ucore.conf"

_ENV = {
    "dir": "UCORE_DIR",
    "site_store": "UCORE_SITE_STORE",
    "registry": "UCORE_REGISTRY",
    "insecure_registries": "UCORE_INSECURE",
    "jobs": "UCORE_JOBS",
    "platform": "UCORE_PLATFORM",
    "timeout": "UCORE_TIMEOUT",
    "stall_timeout": "UCORE_STALL_TIMEOUT",
    "retries": "UCORE_RETRIES",
    "max_retry_after": "UCORE_MAX_RETRY_AFTER",
    "disable_plugins": "UCORE_DISABLE_PLUGINS",
    "pass_env": "UCORE_PASS_ENV",
    "launcher_binds": "UCORE_LAUNCHER_BINDS",
}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def positive_int(name: str, maximum: Optional[int] = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{name} must be a whole number, not {text!r}") from None
        if value < 1:
            raise UsageError(f"{name} must be at least 1")
        if maximum is not None and value > maximum:
            raise UsageError(f"{name} must be at most {maximum}")
        return value

    return convert


#: Parallel downloads. The HTTP connection pool is sized by it and filled up front, so an
#: absurd value is minutes of CPU before the first request; no registry wants more anyway.
MAX_JOBS = 64


#: The longest a time setting may be: a day. ``float`` also reads ``nan``, ``inf`` and
#: ``1e300``, which no socket timeout or sleep accepts.
_MAX_SECONDS = 86400.0


def _positive_float(name: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{name} must be a number, not {text!r}") from None
        if not 0 < value <= _MAX_SECONDS:  # also false for nan
            raise UsageError(f"{name} must be positive and at most {_MAX_SECONDS:.0f} seconds")
        return value

    return convert


def _boolean(name: str) -> Callable[[str], bool]:
    def convert(text: str) -> bool:
        value = text.strip().lower()
        if value in ("1", "yes", "true", "on"):
            return True
        if value in ("0", "no", "false", "off"):
            return False
        raise UsageError(f"{name} must be yes or no, not {text!r}")

    return convert


def _directory(text: str, name: str = "dir") -> Path:
    """The store's path. Empty would mean the current directory, which the store would then
    take over (made private, filled with ``blobs/``, ``refs/``...): refused, as is a NUL byte,
    which no system call accepts."""
    if not text.strip():
        raise UsageError(f"{name} must not be empty")
    if "\0" in text:
        raise UsageError(f"{name} must not contain a NUL byte")
    return Path(text).expanduser()


def _platform(text: str) -> Platform:
    from ucore.values.oci import Platform

    return Platform.parse(text)


_CONVERT: dict[str, Callable[[str], Any]] = {
    "dir": _directory,
    "site_store": lambda text: _directory(text, "site_store"),
    "registry": str,
    "insecure_registries": _csv,
    "jobs": positive_int("jobs", MAX_JOBS),
    "platform": _platform,
    "timeout": _positive_float("timeout"),
    "stall_timeout": _positive_float("stall_timeout"),
    "retries": positive_int("retries"),
    "max_retry_after": _positive_float("max_retry_after"),
    "disable_plugins": _csv,
    "pass_env": lambda text: tuple(text.replace(",", " ").split()),
    "launcher_binds": _boolean("launcher_binds"),
}

#: Settings whose variable, set but empty, is a value and not "unset": ``UCORE_PASS_ENV=``
#: passes no host variable at all.
_EMPTY_IS_A_VALUE = frozenset({"pass_env"})


class Config(NamedTuple):
    """The merged settings, immutable (a named tuple: see :mod:`ucore.values.model` for why)."""

    #: The store; :meth:`load` defaults it to ``~/.ucore``.
    dir: Path
    #: The administrator's store that every user reads images from and nothing writes to
    #: (see :class:`ucore.storage.store.Store`); its own administrator fills it with ``dir`` set
    #: to it.
    site_store: Optional[Path] = None
    registry: str = DOCKER_HUB
    insecure_registries: tuple[str, ...] = ()
    jobs: int = 4
    platform: Optional[Platform] = None
    timeout: float = 60.0
    connect_timeout: float = 10.0
    #: Seconds one transfer may spend in all, over its retries and resumes, waiting on a
    #: registry that sends nothing: a silent registry must not hold a batch allocation for
    #: read timeout times attempts (five minutes by default).
    stall_timeout: float = 90.0
    retries: int = 5
    max_retry_after: float = 60.0
    disable_plugins: tuple[str, ...] = ()
    #: Patterns of host variables every run passes (None: :data:`ucore.running.runspec.PASS_ENV`).
    pass_env: Optional[tuple[str, ...]] = None
    #: Whether a run under an MPI launcher binds the launcher's rendezvous directories
    #: (:mod:`ucore.running.launcher`); off for a site whose launcher shares them some other way.
    launcher_binds: bool = True
    #: The parsed command line (None outside the CLI: read it with ``getattr(..., default)``).
    options: Optional[argparse.Namespace] = None
    #: The config file's other sections, for plugins (``[proot]`` ``path = ...``).
    sections: Mapping[str, Mapping[str, str]] = MappingProxyType({})

    @classmethod
    def load(
        cls,
        environ: Optional[dict[str, str]] = None,
        options: Optional[argparse.Namespace] = None,
    ) -> Config:
        """Merge the layers; flags are the ``options`` attributes named like the settings."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        system = env.get("UCORE_SYSTEM_CONFIG") or SYSTEM_CONFIG
        sections = _settings(system, values)
        home = _directory(env["UCORE_DIR"]) if env.get("UCORE_DIR") else None
        values["dir"] = home or values.get("dir") or Path.home() / ".ucore"
        path = env.get("UCORE_CONFIG") or str(values["dir"] / "ucore.conf")
        for name, section in _settings(path, values).items():
            sections[name] = {**sections.get(name, {}), **section}
        for key, var in _ENV.items():
            if env.get(var) or (key in _EMPTY_IS_A_VALUE and var in env):
                values[key] = _CONVERT[key](env[var])
        if options is not None:
            for key, convert in _CONVERT.items():
                flag = getattr(options, key, None)
                if flag not in (None, (), ""):
                    values[key] = flag if not isinstance(flag, str) else convert(flag)
        return cls(**values, options=options, sections=MappingProxyType(sections))

    @property
    def target_platform(self) -> Platform:
        from ucore.values.oci import Platform

        return self.platform or Platform.host()

    def section(self, name: str) -> Mapping[str, str]:
        """A plugin's section of the config file (empty when there is none)."""
        return self.sections.get(name, {})


def _settings(path: str, values: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Put the ``[ucore]`` settings of the file at ``path`` into ``values``; its other
    sections (the plugins')."""
    sections = _read_file(path)
    for key, raw in sections.pop("ucore", {}).items():
        if key not in _CONVERT:
            raise UsageError(f"unknown setting {key!r} in {path}")
        values[key] = _CONVERT[key](raw)
    return sections


#: A config file is a few lines; ``UCORE_CONFIG=/dev/zero`` must not fill the memory.
_MAX_FILE = 1 << 20


def _read_file(path: str) -> dict[str, dict[str, str]]:
    """The config file's sections; nothing when there is no file.

    configparser is imported only when a file exists: most runs have none, and ``ucore run``
    should not pay for the import. Values are taken verbatim (no ``%`` interpolation): sites
    write URLs and paths with ``%`` in them, and a lone one was a crash.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(_MAX_FILE + 1)
        if len(text) > _MAX_FILE:
            raise UsageError(f"cannot read config file {path}: larger than {_MAX_FILE} bytes")
    except (FileNotFoundError, NotADirectoryError):  # the latter: $UCORE_DIR is a file,
        return {}  # which the store reports as the store's problem
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot read config file {path}: {reason}") from None
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise UsageError(f"cannot parse config file {path}: {exc}".splitlines()[0]) from None
    return {name: dict(parser.items(name)) for name in parser.sections()}
