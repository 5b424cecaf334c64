"""Docker Hub images pulled from a site's mirror (``UCORE_HUB_MIRROR=host[:port]``, or
``host`` in the ``[hubmirror]`` section of ucore.conf) but kept under their Docker Hub names,
so that scripts and containers name the same image at every site."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import attrs

from ucore.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.oci import Image, ImageRef
    from ucore.registration import Registry
    from ucore.session import Session
    from ucore.store import Store


class HubMirror:
    def __init__(self, session: Session) -> None:
        self.session = session
        section = session.config.section("hubmirror")
        self.mirror = os.environ.get("UCORE_HUB_MIRROR") or section.get("host", "")

    def handles(self, ref: ImageRef) -> bool:
        return bool(self.mirror) and ref.registry == "docker.io"

    def pull(self, ref: ImageRef, store: Store) -> Image:
        from ucore.builtin.registry.client import DistributionClient

        via = attrs.evolve(ref, registry=self.mirror)
        image: Image = DistributionClient(self.session).pull(via, store)
        record = store.get_ref(via) or {}
        store.set_ref(ref, {k: v for k, v in record.items() if k != "ref"})
        store.delete_ref(via)
        return attrs.evolve(image, ref=ref)


@hookimpl
def ucore_register_registries(register: Registry) -> None:
    register("hubmirror", HubMirror)
