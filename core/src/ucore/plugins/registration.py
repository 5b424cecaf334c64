"""Named registries that plugins fill through the ``ucore_register_*`` hooks.

Each registration remembers which plugin made it, so a clash names both plugins instead of one
silently shadowing the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from ucore.values.errors import PluginError

if TYPE_CHECKING:
    from ucore.storage.store import Store
    from ucore.values.oci import Image, ImageRef


class RegistryClient(Protocol):
    """What a factory registered through ``ucore_register_registries`` returns."""

    def handles(self, ref: ImageRef) -> bool:
        """Whether this client fetches ``ref`` (a mirror: the registries it stands in for)."""

    def pull(self, ref: ImageRef, store: Store) -> Image:
        """Fetch ``ref`` into ``store``, verifying every blob and manifest it publishes, and
        return the stored image; raise a :class:`~ucore.values.errors.UcoreError` on failure."""


class Registry:
    """``register(name, obj)`` collects objects of one kind (engines, registry clients, …)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._owners: dict[str, str] = {}
        self._current = "?"

    def __call__(self, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self._current!r} registered a {self.kind} without a name")
        if name in self._items:
            raise PluginError(
                f"{self.kind} {name!r} registered twice: by plugin {self._owners[name]!r}"
                f" and by plugin {self._current!r}"
            )
        self._items[name] = obj
        self._owners[name] = self._current

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self) -> list[tuple[str, Any]]:
        """``(name, object)`` pairs in the order they were registered: the last plugin
        loaded first and the builtin plugins last, as :meth:`collect` calls them."""
        return list(self._items.items())

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``, for messages and ``ucore info``."""
        return self._owners[name]

    @classmethod
    def collect(cls, pm: pluggy.PluginManager, hook: str, kind: str) -> Registry:
        """Call ``hook`` on every plugin in turn, noting which plugin is registering."""
        registry = cls(kind)
        for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
            registry._current = impl.plugin_name
            impl.function(registry)
        registry._current = "?"
        return registry
