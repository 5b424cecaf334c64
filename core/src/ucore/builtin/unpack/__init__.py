"""The builtin layer unpacker: flattens an image's layers into a container root filesystem,
treating every layer as hostile (see ``shared/safety-rules.md``, "Unpacking layers")."""

from __future__ import annotations

from ucore.builtin.unpack.extract import Limits, modes_path, unpack_image

__all__ = ["Limits", "modes_path", "unpack_image"]
