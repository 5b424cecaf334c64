"""Builtin plugin: the OCI distribution registry client.

Its ``ucore_fetch`` is ``trylast`` so that a mirror or cache plugin returning an image first
wins; the client itself is chosen through ``ucore_register_registries``, where a site plugin can
register one that handles particular hosts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ucore.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.plugins.registration import Registry
    from ucore.session import Session
    from ucore.storage.store import Store
    from ucore.values.oci import Image, ImageRef


@hookimpl
def ucore_register_registries(register: Registry) -> None:
    from ucore.builtin.registry.client import DistributionClient

    register("distribution", DistributionClient)


@hookimpl(trylast=True)
def ucore_fetch(ref: ImageRef, store: Store, session: Session) -> Optional[Image]:
    image: Image = session.registry_client(ref).pull(ref, store)
    return image
