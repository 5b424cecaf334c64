"""The Python API: pull, create, run, list and remove, for programs that embed ucore.

Workflow managers and notebooks use :class:`Ucore`; the ``ucore`` command is a thin layer over
the same functions (its ``pull``, ``create``, ``run``, ``rm`` and ``rmi`` parse arguments, call
them and print). Failures are the CLI's, as typed exceptions from :mod:`ucore.values.errors`: every
one is a :class:`~ucore.values.errors.UcoreError` whose ``exit_code`` is the status the command
would exit with (:class:`~ucore.values.errors.NotFoundError` 3,
:class:`~ucore.values.errors.RegistryError` 4, ...).

::

    from ucore.api import Ucore

    u = Ucore(store="/scratch/me/ucore", on_event=print)
    u.pull("127.0.0.1:5000/busybox")
    result = u.run("127.0.0.1:5000/busybox", ["sh", "-c", "echo hi"], capture=True)
    assert (result.status, result.stdout) == (0, "hi\\n")

``ucore run`` of an existing container goes through this module, so it imports nothing at
module level that such a run does not need (no registry client, no image values, no attrs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from ucore.log import get_logger
from ucore.storage import containers
from ucore.values.errors import NotFoundError, UcoreError, UsageError
from ucore.values.model import Container

if TYPE_CHECKING:
    from ucore.running.runspec import RunOptions
    from ucore.session import Session
    from ucore.values.events import Event
    from ucore.values.oci import Image

log = get_logger(__name__)

#: What ``run`` does when its target names no container: pull the image if it is not stored
#: (``missing``), never pull, always pull, or (with a name) reuse the container another task
#: of a job array creates (``reuse``).
PULL_POLICIES = ("missing", "never", "always", "reuse")
#: How long ``pull="reuse"`` waits for another job creating the container (seconds).
REUSE_WAIT = 1800.0
#: The longest pause between two looks at the container another job is creating.
_REUSE_POLL = 0.4


class RunResult(NamedTuple):
    """How a run ended: the command's exit status (128+N after signal N) and, with
    ``capture=True``, what it wrote (decoded as UTF-8, undecodable bytes replaced)."""

    status: int
    stdout: Optional[str] = None
    stderr: Optional[str] = None


class Ucore:
    """One store with the installed plugins: what the ``ucore`` command works on.

    :param store: the store directory (default: ``UCORE_DIR``, the configuration, then
        ``~/.ucore``).
    :param environ: the environment settings are read from (default: ``os.environ``).
    :param disable_plugins: plugin names to block, as ``-p no:NAME`` does.
    :param on_event: called with every :class:`~ucore.values.events.Event` (progress, stages,
        retries), from download threads too: keep it fast and thread-safe.
    """

    def __init__(
        self,
        store: Optional[str | Path] = None,
        *,
        environ: Optional[Mapping[str, str]] = None,
        disable_plugins: Sequence[str] = (),
        on_event: Optional[Callable[[Event], None]] = None,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        if store is not None:
            env["UCORE_DIR"] = os.fspath(store)
        self.session = open_session(env, tuple(disable_plugins))
        if on_event is not None:
            subscribe(self.session, on_event)

    # --- images -----------------------------------------------------------------------------

    def pull(self, image: str) -> Image:
        """Fetch ``image`` (Docker's names: ``ubuntu:24.04``) into the store; the stored image."""
        from ucore.storage import images

        return self.session.pull(images.parse_ref(image, self.session.config.registry))

    def images(self) -> list[Image]:
        """The stored images (the site store's too), skipping any whose record is damaged."""
        from ucore.storage import images

        found = []
        for ref, record, _site in self.session.store.all_refs():
            with contextlib.suppress(UcoreError):
                found.append(images.load(self.session.store, ref, record))
        return found

    def remove_image(self, image: str) -> None:
        """Remove a stored image and the blobs no other image uses."""
        remove_image(self.session, image)

    # --- containers -------------------------------------------------------------------------

    def create(self, image: str, *, name: Optional[str] = None) -> Container:
        """A new container of ``image`` (pulled first if not stored), named ``name``."""
        return create(self.session, image, name)

    def containers(self) -> list[Container]:
        """Every container in the store (damaged ones left out)."""
        return [c for c, damage in containers.all_containers(self.session.store) if not damage]

    def container(self, name_or_id: str) -> Container:
        """The container of that name or id; :class:`~ucore.values.errors.NotFoundError` if none."""
        return containers.lookup(self.session.store, name_or_id)

    def remove(self, container: str, *, force: bool = False) -> None:
        """Remove a container; ``force`` also removes a protected or damaged one."""
        remove_container(self.session, container, force)

    # --- running ----------------------------------------------------------------------------

    def run(
        self,
        target: str,
        command: Sequence[str] = (),
        *,
        env: Optional[Mapping[str, str]] = None,
        workdir: Optional[str] = None,
        user: Optional[str] = None,
        volumes: Sequence[str] = (),
        options: Optional[RunOptions] = None,
        name: Optional[str] = None,
        pull: str = "missing",
        remove: bool = False,
        capture: bool = False,
        input: Optional[bytes] = None,
    ) -> RunResult:
        """Run ``command`` (or the image's) in the container ``target`` names, or in a new
        container of the image it names, as ``ucore run`` does.

        :param env: variables to set, after the image's (``-e``).
        :param workdir: the working directory (``-w``); ``user``: as ``-u`` takes it.
        :param volumes: ``HOST[:CONTAINER[:ro]]`` binds (``-v``).
        :param options: every other ``run`` option (:class:`~ucore.running.runspec.RunOptions`);
            the arguments above are added to it.
        :param name: the name of a container made from an image (``--name``).
        :param pull: one of :data:`PULL_POLICIES`.
        :param remove: remove the container afterwards (``--rm``).
        :param capture: return what the command writes instead of letting it through.
        :param input: the command's standard input (otherwise this process's).
        """
        from ucore.running import runspec

        base = options or runspec.RunOptions(pass_env=pass_env(self.session))
        opts = base._replace(
            command=tuple(command) or base.command,
            env=base.env + tuple(f"{k}={v}" for k, v in (env or {}).items()),
            workdir=workdir if workdir is not None else base.workdir,
            user=user if user is not None else base.user,
            volumes=base.volumes + tuple(volumes),
            launcher_binds=self.session.config.launcher_binds,
        )
        if not capture and input is None:
            return RunResult(run(self.session, target, opts, name=name, pull=pull, remove=remove))
        with _redirected(capture, input) as outputs:
            status = run(self.session, target, opts, name=name, pull=pull, remove=remove)
            return RunResult(status, *outputs())


# --- the operations, shared with the command line -------------------------------------------


def open_session(environ: Mapping[str, str], disabled: tuple[str, ...] = ()) -> Session:
    """A session on the store and plugins ``environ`` configures."""
    from ucore.config import Config
    from ucore.plugins.loading import get_plugin_manager
    from ucore.session import Session

    env = dict(environ)
    from_env = tuple(p.strip() for p in env.get("UCORE_DISABLE_PLUGINS", "").split(",") if p)
    plugins = get_plugin_manager(from_env + disabled)
    config = Config.load(environ=env)
    plugins.pm.hook.ucore_configure.call_historic(kwargs={"config": config})
    return Session(config, plugins)


def subscribe(session: Session, callback: Callable[[Event], None]) -> None:
    """Call ``callback`` with every event the session publishes."""
    from ucore import __version__
    from ucore.plugins.hookspecs import hookimpl

    class _Listener:
        @hookimpl
        def ucore_event(self, event: Event) -> None:
            callback(event)

    session.plugins.register(_Listener(), f"api-events-{id(callback)}", "ucore (api)", __version__)


def find_image(session: Session, text: str) -> Image:
    """The stored image ``text`` names, pulled first when it is not stored."""
    from ucore.storage import images

    store = session.store
    try:
        ref = images.lookup(store, text, session.config.registry)
    except NotFoundError:
        return session.pull(images.parse_ref(text, session.config.registry))
    return images.load(store, ref)


def create(
    session: Session, image: str, name: Optional[str] = None, take_name: bool = False
) -> Container:
    """A container of ``image`` named ``name``; ``take_name`` takes the name from the
    container that has it (unless that one is protected), as ``create --force`` does."""
    if take_name and name is None:
        raise UsageError("create: --force only applies with --name")
    if name is not None:
        containers.check_name(name)
    found = find_image(session, image)
    if not take_name:
        return containers.create(session, found, name)
    assert name is not None
    container = containers.create(session, found, None)
    try:
        _take_name(session, name, container)
    except BaseException:
        with contextlib.suppress(UcoreError):
            containers.remove(session.store, container, force=True)
        raise
    return container


def _take_name(session: Session, name: str, container: Container) -> None:
    """Give ``name`` to ``container``, taking it from the container that has it unless that
    one is protected; a name still being reserved by a running ``create`` is not taken."""
    store = session.store
    for _ in range(3):
        try:
            containers.reserve_name(store, name, container.id)
            return
        except UsageError:
            try:
                holder = containers.lookup(store, name)
            except NotFoundError:
                raise UsageError(
                    f"container name {name!r} is being reserved by another create"
                ) from None
            if holder.id == container.id:
                return
            if holder.protected:
                raise UsageError(
                    f"container name {name!r} belongs to protected container {holder.id}"
                ) from None
            containers.release_name(store, name, holder.id)
    raise UsageError(f"container name {name!r} is contested by other jobs; try again")


def remove_container(session: Session, text: str, force: bool = False) -> None:
    """Remove the container ``text`` names; with ``force`` also one whose record is
    damaged (whether it was protected cannot be read, hence only with ``force``)."""
    from ucore.values.errors import StoreError

    store = session.store
    try:
        container = containers.lookup(store, text)
    except StoreError as exc:
        if not force:
            raise StoreError(f"{exc} ('ucore rm -f' removes it)") from None
        container = containers.damaged(store, text)
    containers.remove(store, container, force=force)


def remove_image(session: Session, text: str) -> int:
    """Remove the stored image ``text`` names; the number of blobs freed."""
    from ucore.storage import images

    store = session.store
    ref = images.lookup(store, text, session.config.registry)
    return len(images.remove(store, ref))


def pass_env(session: Session) -> tuple[str, ...]:
    """The ``pass_env`` setting (read from the environment the session's settings were
    loaded from: ``UCORE_PASS_ENV=``, empty, passes none), else
    :data:`ucore.running.runspec.PASS_ENV`."""
    from ucore.running import runspec

    configured = session.config.pass_env
    return runspec.PASS_ENV if configured is None else configured


def run(
    session: Session,
    target: Optional[str],
    opts: RunOptions,
    *,
    name: Optional[str] = None,
    pull: str = "missing",
    remove: bool = False,
    location: Optional[str] = None,
) -> int:
    """Run ``opts`` in the container ``target`` names (made from the image it names when
    there is none), or in the root directory ``location``; the command's exit status."""
    from ucore.running import runspec

    if pull not in PULL_POLICIES:
        raise UsageError(f"pull policy {pull!r}: expected one of {', '.join(PULL_POLICIES)}")
    if location:
        container = _location(location)
    else:
        if not target:
            raise UsageError("run: give a CONTAINER or an IMAGE (or --location DIR)")
        if name is not None:
            containers.check_name(name)  # before a pull, not after it
        container = _container(session, target, name, pull)
    try:
        with containers.running(session.store, container):
            config = containers.image_config(container) if opts.meta else {}
            spec = runspec.build(session, container, config, opts)
            return session.execute(container, spec)
    finally:
        if container.location is not None:
            import shutil

            shutil.rmtree(container.dir, ignore_errors=True)
        elif remove:
            _remove(session, container)


def _location(text: str) -> Container:
    """A root directory outside the store, which must be one the user can open."""
    root = Path(text).expanduser().resolve()
    try:
        os.close(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        raise UsageError(f"--location {text}: {exc.strerror}") from None
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="ucore-run-"))
    return Container(id="location", dir=scratch, image="", location=root)


def _container(session: Session, text: str, name: Optional[str], pull: str) -> Container:
    store = session.store
    if pull == "reuse" and name:
        with contextlib.suppress(NotFoundError):
            return containers.lookup(store, name)
    try:
        found = containers.lookup(store, text)
    except NotFoundError:
        pass
    else:
        if name and name not in found.names:
            raise UsageError(
                f"run: --name names a container made from an image; {text} exists already"
                " ('ucore name' gives it another name)"
            )
        return found
    image = _image(session, text, pull)
    if pull == "reuse" and name:
        return _create_or_reuse(session, image, name)
    return containers.create(session, image, name)


def _create_or_reuse(session: Session, image: Image, name: str) -> Container:
    """``--pull=reuse --name N``: the batch jobs of an array all ask for N at once; one
    creates it and the others wait for that one, then run in its container. A creator that
    dies leaves a reservation the next attempt takes over, so the wait ends either way; it
    is bounded for a creator on another host, which this one cannot see die."""
    import time

    waited, pause = 0.0, 0.1
    while True:
        try:
            return containers.create(session, image, name)
        except containers.NameBusyError as exc:
            if waited >= REUSE_WAIT:
                raise
            if waited == 0:  # normal in a job array: not a warning in every task's log
                log.info(f"{exc}: waiting for it to finish", container=name)
        except containers.NameInUseError:
            with contextlib.suppress(NotFoundError):
                return containers.lookup(session.store, name)  # made since we looked
            raise
        time.sleep(pause)
        waited += pause
        # Every task of the array runs as soon as the container is there: a task that slept
        # 2 s after it appeared held its allocation's time-to-all-ranks up by as much.
        pause = min(pause * 2, _REUSE_POLL)


def _image(session: Session, text: str, policy: str) -> Image:
    from ucore.storage import images

    store = session.store
    registry = session.config.registry
    try:
        ref = images.parse_ref(text, registry)
    except UsageError:
        raise NotFoundError(
            f"no container named {text!r} (see 'ucore ps'), and it is not an image name"
        ) from None
    if policy != "always":
        try:
            return images.load(store, images.lookup(store, text, registry))
        except NotFoundError:
            if policy == "never":
                raise NotFoundError(
                    f"no container or image named {text} in the store, and --pull=never"
                ) from None
    return session.pull(ref)


def _remove(session: Session, container: Container) -> None:
    """``--rm``: what keeps the container (protected, in use by another run) is a warning,
    not a failure of the run."""
    if container.protected:
        log.warning("--rm: the container is protected and was kept", container=container.id)
        return
    try:
        containers.remove(session.store, container)
    except NotFoundError:
        pass
    except UsageError as exc:
        log.warning(f"--rm: {exc}; it was kept", container=container.id)


@contextlib.contextmanager
def _redirected(
    capture: bool, data: Optional[bytes]
) -> Iterator[Callable[[], tuple[Optional[str], Optional[str]]]]:
    """This process's descriptors 0 (from ``data``), 1 and 2 (into files, with ``capture``)
    for the duration: the engine's processes inherit them. Yields what reads the output."""
    import sys
    import tempfile

    files: dict[int, Any] = {}
    saved: dict[int, int] = {}
    for stream in (sys.stdout, sys.stderr):  # what this process wrote goes where it was meant
        if stream is not None:
            stream.flush()
    with contextlib.ExitStack() as stack:
        for fd in ([0] if data is not None else []) + ([1, 2] if capture else []):
            files[fd] = stack.enter_context(tempfile.TemporaryFile())
        if data is not None:
            files[0].write(data)
            files[0].seek(0)

        def outputs() -> tuple[Optional[str], Optional[str]]:
            if not capture:
                return None, None
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
            texts = []
            for fd in (1, 2):
                files[fd].seek(0)
                texts.append(files[fd].read().decode("utf-8", "replace"))
            return texts[0], texts[1]

        try:
            for fd, f in files.items():
                saved[fd] = os.dup(fd)
                os.dup2(f.fileno(), fd)
            yield outputs
        finally:
            for fd, old in saved.items():
                os.dup2(old, fd)
                os.close(old)
