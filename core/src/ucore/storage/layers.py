"""Layer blobs: compression detected by magic bytes, never by the declared media type.

A registry (or an archive) can label a zstd layer as gzip; the bytes decide. ``zstandard`` is
imported only when a zstd layer is actually met.
"""

from __future__ import annotations

import gzip
from typing import IO, BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` from a blob's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def open_decompressed(raw: BinaryIO) -> IO[bytes]:
    """A readable stream of the uncompressed tar inside ``raw`` (which must be seekable)."""
    head = raw.read(4)
    raw.seek(0)
    kind = compression(head)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard

        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return reader
    return raw
