"""Builtin plugin: the layer unpacker.

Its ``ucore_unpack`` is ``trylast``, so a plugin that unpacks differently (a cache of unpacked
layers, a squashfs builder) and returns a root first wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ucore.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from pathlib import Path

    from ucore.session import Session
    from ucore.values.oci import Image


@hookimpl(trylast=True)
def ucore_unpack(image: Image, dest: Path, session: Session) -> Optional[Path]:
    from ucore.storage.extract import unpack_image

    unpack_image(session.store, image, dest, stage=session.stage)
    return dest
