"""Hook specifications: the whole contract between the ucore core and its plugins.

Grouped by lifecycle: start-up (options, configuration, registration), the image pipeline
(fetch, unpack), the run pipeline (prepare, execute) and the event bus. Hooks grow by gaining
keyword arguments; pluggy lets an implementation accept only the arguments it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import pluggy

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from ucore.config import Config
    from ucore.plugins.registration import Registry
    from ucore.session import Session
    from ucore.storage.store import Store
    from ucore.values.events import Event
    from ucore.values.model import Container, Preparation, RunSpec
    from ucore.values.oci import Image, ImageRef

PROJECT = "ucore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- start-up -------------------------------------------------------------------------------


@hookspec(historic=True)
def ucore_addoption(
    parser: argparse.ArgumentParser, subcommands: dict[str, Any], commands: Any
) -> None:
    """Add command-line options, and commands of the plugin's own.

    Historic, so a plugin registered late still gets the call.

    :param parser: the top-level parser; options added here apply to every command.
    :param subcommands: the parsers of each command by name (``"pull"``, ``"run"``, …), for
        options that belong to one command only (e.g. ``--gpus`` on ``run``). Only the
        commands this invocation can run are built, so look them up with ``.get(name)``.
    :param commands: the subparsers object: ``commands.add_parser(NAME, ...)`` adds a command
        (``ucore mpi``); its parser sets ``handler`` (called as ``handler(session, args)``,
        returning the exit status) with ``set_defaults``.
    """


@hookspec(historic=True)
def ucore_configure(config: Config) -> None:
    """Read settings once the command line, environment and config file are merged.

    :param config: the merged configuration; ``config.options`` holds the parsed arguments.
    """


@hookspec
def ucore_register_engines(register: Registry) -> None:
    """Hand execution engine classes to ``register(name, engine_class)``.

    A name registered twice fails loudly, naming both plugins.

    :param register: the engine registry.
    """


@hookspec
def ucore_register_registries(register: Registry) -> None:
    """Hand registry clients to ``register(name, client_factory)``.

    A client factory is called as ``factory(session)`` and returns a
    :class:`~ucore.plugins.registration.RegistryClient`: ``handles(ref) -> bool`` and
    ``pull(ref, store) -> Image``. Clients are asked in the order the hook calls the plugins:
    the plugin loaded last first, the builtin Docker/OCI client last, so a mirror or cache
    registered here is asked before it; the first that handles a reference fetches it.

    :param register: the registry-client registry.
    """


@hookspec
def ucore_register_devices(register: Registry) -> None:
    """Hand device providers (GPUs, InfiniBand HCAs) to ``register(kind, provider_class)``,
    each a :class:`~ucore.plugins.devices.DeviceProvider`.

    A provider serves the requests of one kind (``--device nvidia.com/gpu=0``; see
    :mod:`ucore.plugins.devices`). The class has ``kind`` and optional ``aliases``; constructed with
    the session, it offers ``prepare(container, spec, requests)``, which returns what
    :func:`ucore_prepare` returns plus an optional ``report`` (a JSON-able record of what was
    bound), and ``report(requests)`` for ``ucore info --devices`` (a JSON-able mapping whose
    ``summary`` lines are printed). It binds devices as engine-neutral values only, so every
    engine honours it; it raises :class:`~ucore.values.errors.DeviceError` for a device the host
    lacks. Providers are collected only when a run asks for devices.

    :param register: the device-provider registry.
    """


# --- images ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ucore_fetch(ref: ImageRef, store: Store, session: Session) -> Optional[Image]:
    """Fetch an image into the store and return it. Stops at first non-None result.

    The builtin registry client is ``trylast``, so a mirror or cache plugin that returns an
    :class:`~ucore.values.oci.Image` first wins. Implementations must verify everything they store.

    :param ref: the fully qualified reference to fetch.
    :param store: the local store to publish blobs and the reference into.
    :param session: the running session (configuration, events, registries).
    :returns: the stored image, or None to let the next implementation try.
    """


@hookspec(firstresult=True)
def ucore_unpack(image: Image, dest: Path, session: Session) -> Optional[Path]:
    """Flatten an image's layers into a root filesystem. Stops at first non-None result.

    The builtin unpacker is ``trylast``; it follows the safety rules for hostile layers.

    :param image: the stored image.
    :param dest: an empty staging directory to unpack into.
    :param session: the running session.
    :returns: the root filesystem directory, or None to let the next implementation try.
    """


# --- running --------------------------------------------------------------------------------


@hookspec
def ucore_prepare(container: Container, spec: RunSpec, session: Session) -> Optional[Preparation]:
    """Contribute engine-neutral bindings for a run (mounts, environment, device nodes).

    Implementations return values rather than mutate ``spec``; the core merges them in plugin
    order, so GPU and InfiniBand binding work in every engine without knowing any engine. For
    example, a plugin that gives every container a site's scratch directory::

        @hookimpl
        def ucore_prepare(container, spec, session):
            return {
                "mounts": [Mount("/scratch", "/scratch")],
                "env": {"SCRATCH": "/scratch"},
            }

    A value of the wrong type (a mount that is not a :class:`~ucore.values.model.Mount`) fails the
    run with a :class:`~ucore.values.errors.PluginError` naming it.

    :param container: the container about to run.
    :param spec: the run specification built from the image config and the command line.
    :param session: the running session.
    :returns: a :class:`~ucore.values.model.Preparation` (any of ``mounts``, ``devices`` and
        ``env``), or None.
    """


@hookspec(firstresult=True)
def ucore_execute(container: Container, spec: RunSpec, session: Session) -> Optional[int]:
    """Run the container's command. Stops at first non-None result.

    The builtin dispatch to the chosen engine is ``trylast``; wrappers may time or clean up.

    :param container: the container to run.
    :param spec: the complete, merged run specification.
    :param session: the running session.
    :returns: the command's exit status, or None to let the next implementation try.
    """


# --- events ---------------------------------------------------------------------------------


@hookspec
def ucore_event(event: Event) -> None:
    """Receive every event published on the bus (progress, stage timings, retries).

    Called synchronously, possibly from download threads: keep it fast and thread-safe.

    :param event: a frozen :class:`~ucore.values.events.Event`; ``event.name`` is its dotted kind.
    """
