"""The plugin machinery: the contract between the core and its plugins, and what loads them.

:mod:`.hookspecs` (the hooks and the ``hookimpl`` marker), :mod:`.engines` (what an execution
engine is and how one is chosen), :mod:`.devices` (device requests and their providers),
:mod:`.registration` (what the ``ucore_register_*`` hooks fill), :mod:`.carried` and
:mod:`.probecache` (files a plugin's wheel carries, what a plugin learned of the host) for
plugin authors; :mod:`.manager` and :mod:`.loading` build the plugin manager. The builtin
plugins themselves live in :mod:`ucore.builtin`, loaded as any other plugin.
"""

from typing import TYPE_CHECKING

from ucore import _reexport

if TYPE_CHECKING:
    from ucore.plugins.carried import Carried
    from ucore.plugins.devices import DeviceProvider
    from ucore.plugins.engines import Engine
    from ucore.plugins.hookspecs import hookimpl
    from ucore.plugins.registration import Registry, RegistryClient

_NAMES = {
    "hookimpl": "hookspecs",
    "Engine": "engines",
    "DeviceProvider": "devices",
    "Registry": "registration",
    "RegistryClient": "registration",
    "Carried": "carried",
}
__all__ = [
    "Carried",
    "DeviceProvider",
    "Engine",
    "Registry",
    "RegistryClient",
    "hookimpl",
]
__getattr__ = _reexport(__name__, _NAMES)
