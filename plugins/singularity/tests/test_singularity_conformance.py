"""The singularity engine (S1) passes ucore's engine conformance suite with a real runtime.

CI runs it inside a Debian unstable root with Apptainer (tox env ``singularity``, as root and as
ucore-test); where no usable Apptainer or Singularity is found the probe's reason skips it.
What the runtime cannot do is declared as :data:`ucore.testing.conformance.LIMITS` names, and
those checks end as expected failures that say why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from ucore.testing.conformance import EngineConformance

#: Only as an unprivileged user: root runs another user with ``--security uid:N``.
OTHER_USERS = (
    "unprivileged, the runtime runs a container as the invoking user or as root (--fakeroot):"
    " it maps no other id (only root may use --security uid:N)"
)
RESOLV_DIR = (
    "with 'config resolv_conf = yes' (the default) the runtime binds its own resolv.conf onto"
    " the image's /etc/resolv.conf and fails on a directory; no option turns it off per run"
)


class TestSingularity(EngineConformance):
    engine = "singularity"
    limits: ClassVar[Mapping[str, str]] = {
        "name files that are directories": RESOLV_DIR,
        **({"other users": OTHER_USERS} if os.getuid() != 0 else {}),
    }
