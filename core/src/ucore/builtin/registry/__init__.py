"""The builtin Docker/OCI distribution client: the ``registry`` plugin (:mod:`.plugin`) and
the client, transport and credentials it is made of.

:func:`builtin_client` is here, and not among the values plugins register, because it is this
plugin's client that a mirror or cache plugin fetches through: the registration machinery must
not import a builtin plugin, which names the session and the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ucore.builtin.registry.client import DistributionClient
    from ucore.session import Session


def builtin_client(session: Session) -> DistributionClient:
    """The builtin Docker/OCI distribution client, for a mirror or cache plugin to fetch
    through: ``builtin_client(session).pull(ref, store, source="mirror.site:5000")`` fetches
    ``ref`` from the mirror, verified as any pull, and stores it under ``ref``'s own name."""
    from ucore.builtin.registry.client import DistributionClient

    return DistributionClient(session)
