"""Plain values: what the rest of ucore passes around, with no behaviour beyond validating
themselves.

:mod:`.model` (containers, run specifications, mounts, devices: on ``ucore run``'s start-up
path, so plain dataclasses), :mod:`.oci` (digests, references, platforms, descriptors, stored
images: validated with attrs, kept off that path), :mod:`.events` (what the event bus carries)
and :mod:`.errors` (the typed errors and their exit statuses). They import nothing of ucore
but each other, so every other package may use them.
"""

from typing import TYPE_CHECKING

from ucore import _reexport

if TYPE_CHECKING:
    from ucore.values.errors import (
        AuthError,
        CommandNotExecutableError,
        CommandNotFoundError,
        DeviceError,
        IntegrityError,
        NotFoundError,
        PluginError,
        RegistryError,
        StoreError,
        UcoreError,
        UsageError,
    )
    from ucore.values.events import Event
    from ucore.values.model import Container, DeviceNode, DeviceRequest, Mount, Preparation, RunSpec
    from ucore.values.oci import Descriptor, Digest, Image, ImageRef, Platform

_NAMES = {
    "Container": "model",
    "DeviceNode": "model",
    "DeviceRequest": "model",
    "Mount": "model",
    "Preparation": "model",
    "RunSpec": "model",
    "AuthError": "errors",
    "CommandNotExecutableError": "errors",
    "CommandNotFoundError": "errors",
    "DeviceError": "errors",
    "IntegrityError": "errors",
    "NotFoundError": "errors",
    "PluginError": "errors",
    "RegistryError": "errors",
    "StoreError": "errors",
    "UcoreError": "errors",
    "UsageError": "errors",
    "Descriptor": "oci",
    "Digest": "oci",
    "Image": "oci",
    "ImageRef": "oci",
    "Platform": "oci",
    "Event": "events",
}
__all__ = [
    "AuthError",
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "Container",
    "Descriptor",
    "DeviceError",
    "DeviceNode",
    "DeviceRequest",
    "Digest",
    "Event",
    "Image",
    "ImageRef",
    "IntegrityError",
    "Mount",
    "NotFoundError",
    "Platform",
    "PluginError",
    "Preparation",
    "RegistryError",
    "RunSpec",
    "StoreError",
    "UcoreError",
    "UsageError",
]
__getattr__ = _reexport(__name__, _NAMES)
