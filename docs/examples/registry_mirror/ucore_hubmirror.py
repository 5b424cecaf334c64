"""Docker Hub images pulled from a site's mirror (``UCORE_HUB_MIRROR=host[:port]``, or
``host`` in the ``[hubmirror]`` section of ucore.conf) but kept under their Docker Hub names,
so that scripts and containers name the same image at every site."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ucore.builtin.registry import builtin_client
from ucore.plugins import hookimpl

if TYPE_CHECKING:
    from ucore.plugins import Registry
    from ucore.session import Session
    from ucore.storage.store import Store
    from ucore.values import Image, ImageRef


class HubMirror:
    def __init__(self, session: Session) -> None:
        self.session = session
        section = session.config.section("hubmirror")
        self.mirror = os.environ.get("UCORE_HUB_MIRROR") or section.get("host", "")

    def handles(self, ref: ImageRef) -> bool:
        return bool(self.mirror) and ref.registry == "docker.io"

    def pull(self, ref: ImageRef, store: Store) -> Image:
        image: Image = builtin_client(self.session).pull(ref, store, source=self.mirror)
        return image


@hookimpl
def ucore_register_registries(register: Registry) -> None:
    register("hubmirror", HubMirror)
