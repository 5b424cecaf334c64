"""The session: the one place that calls ``pm.hook.*``.

Commands and plugins go through a :class:`Session` to fetch images, publish events and find
registered engines or registries, so every call site sees the same configuration and store.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

from ucore.config import Config
from ucore.log import get_logger
from ucore.plugins.registration import Registry
from ucore.storage.store import Store
from ucore.values.errors import PluginError, RegistryError

if TYPE_CHECKING:
    from ucore.plugins.manager import Plugins

    # Not needed to run a container: ``ucore run`` imports none of them unless it pulls.
    from ucore.values.events import Event
    from ucore.values.model import Container, Preparation, RunSpec
    from ucore.values.oci import Image, ImageRef

log = get_logger(__name__)


class Session:
    def __init__(self, config: Config, plugins: Plugins) -> None:
        self.config = config
        self.plugins = plugins
        self.pm = plugins.pm
        self.hook = plugins.pm.hook
        self.store = Store.open(config.dir, config.site_store)
        self._registries: Optional[Registry] = None
        self._lock = threading.Lock()

    # --- events -----------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether anyone subscribes to events: producers skip building them otherwise."""
        return bool(self.hook.ucore_event.get_hookimpls())

    def emit(self, event: Event) -> None:
        if self.listening:
            with self._lock:  # subscribers (a terminal display) need not be thread-safe
                self.hook.ucore_event(event=event)

    @contextlib.contextmanager
    def stage(self, stage: str, subject: str) -> Iterator[None]:
        from ucore.values.events import StageFinished, StageStarted

        started = time.monotonic()
        self.emit(StageStarted(stage=stage, subject=subject))
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = round(time.monotonic() - started, 6)
            self.emit(StageFinished(stage=stage, subject=subject, seconds=seconds, ok=ok))

    # --- registrations ----------------------------------------------------------------------

    @property
    def registries(self) -> Registry:
        if self._registries is None:
            self._registries = Registry.collect(
                self.pm, "ucore_register_registries", "registry client"
            )
        return self._registries

    def registry_client(self, ref: ImageRef) -> Any:
        for _name, factory in self.registries.items():
            client = factory(self)
            if client.handles(ref):
                return client
        raise RegistryError(f"no installed registry client handles {ref.registry}")

    # --- images -----------------------------------------------------------------------------

    def pull(self, ref: ImageRef) -> Image:
        """Fetch ``ref`` into the user's store; an image the site store holds (and the
        user's store does not shadow) is used from there, and nothing is downloaded, unless
        the user asked for another platform than the site's (``--platform``)."""
        if self.store.in_site(ref):
            from ucore.storage import images

            image = images.load(self.store, ref)
            wanted = self.config.platform
            if wanted is None or image.platform is None or str(wanted) == str(image.platform):
                log.info("the image is in the site store: nothing to pull", image=ref.familiar)
                return image
        self.store.ensure()
        self.store.cleanup_tmp()
        with self.stage("pull", str(ref)):
            image = self.hook.ucore_fetch(ref=ref, store=self.store, session=self)
        if image is None:
            raise RegistryError(f"no plugin could fetch {ref} (is the registry plugin blocked?)")
        return image  # type: ignore[no-any-return]

    # --- running ----------------------------------------------------------------------------

    def prepare(self, container: Container, spec: RunSpec) -> list[Preparation]:
        """What plugins add to a run (mounts, env, devices), one mapping per plugin."""
        results = self.hook.ucore_prepare(container=container, spec=spec, session=self)
        return [r for r in results if r]

    def execute(self, container: Container, spec: RunSpec) -> int:
        """Run the container's command; its exit status."""
        status = self.hook.ucore_execute(container=container, spec=spec, session=self)
        if status is None:
            raise PluginError("no plugin could run the container (is 'execute' blocked?)")
        return int(status)
