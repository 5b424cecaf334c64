"""Builtin plugin: the OCI distribution registry client.

Its ``ucore_fetch`` is ``trylast`` so that a mirror or cache plugin returning an image first
wins; the client itself is chosen through ``ucore_register_registries``, where a site plugin can
register one that handles particular hosts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ucore.hookspecs import hookimpl

if TYPE_CHECKING:
    from ucore.oci import Image, ImageRef
    from ucore.registration import Registry
    from ucore.session import Session
    from ucore.store import Store


@hookimpl
def ucore_register_registries(register: Registry) -> None:
    from ucore.builtin.registry.client import DistributionClient

    register("distribution", DistributionClient)


@hookimpl(trylast=True)
def ucore_fetch(ref: ImageRef, store: Store, session: Session) -> Optional[Image]:
    image: Image = session.registry_client(ref).pull(ref, store)
    return image
