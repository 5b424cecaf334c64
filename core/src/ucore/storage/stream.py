"""A layer blob as the tar stream inside it: decompressed, hashed, counted and bounded.

Decompression and hashing run in a thread, ahead of the tar parser: zlib, zstd and sha256
release the GIL, so they overlap with the parsing and the file writes (as ``tar -xzf`` overlaps
gzip with tar), which is most of what keeps unpacking near ``tar``'s speed. The thread stops at
the first error, which the reader re-raises in the caller's thread.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import queue
import threading
import zlib
from typing import BinaryIO, Union, cast

from ucore.storage.layers import compression, open_decompressed
from ucore.values.oci import Digest

_CHUNK = 1 << 20
#: Chunks decompressed ahead of the parser (memory: this many megabytes at most).
_AHEAD = 8


class BadLayer(Exception):
    """A layer that is malformed or hostile; the message says why, in one line."""


class _Digesting:
    """Reads a stream, hashing and counting every byte that passes, up to ``limit`` bytes.

    Errors of a decompressor (``errors``) become one-line :class:`BadLayer` messages.
    """

    def __init__(
        self, raw: BinaryIO, limit: int, errors: tuple[type[BaseException], ...] = ()
    ) -> None:
        self._raw = raw
        self._errors = errors
        self.limit = limit
        self.count = 0
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._raw.read(size)
        except self._errors as exc:
            raise BadLayer(f"corrupt compressed data: {exc}") from None
        self.count += len(data)
        if self.count > self.limit:
            raise BadLayer(f"uncompressed size exceeds the limit of {self.limit} bytes")
        self._hash.update(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Rewind to the start only (:func:`ucore.storage.layers.open_decompressed` peeks at the
        magic bytes): what was hashed is forgotten."""
        if (offset, whence) != (0, os.SEEK_SET):
            raise OSError(errno.ESPIPE, "only a rewind is supported")
        self._raw.seek(0)
        self.count = 0
        self._hash = hashlib.sha256()
        return 0

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> Digest:
        return Digest(self._hash.hexdigest())


def _decompressor_errors(kind: str) -> tuple[type[BaseException], ...]:
    if kind == "gzip":
        return (EOFError, zlib.error, gzip.BadGzipFile)
    if kind == "zstd":
        import zstandard

        return (zstandard.ZstdError,)
    return ()


_Item = Union[bytes, BaseException, None]


class LayerStream:
    """The uncompressed tar stream of a layer blob, for :mod:`tarfile` to read.

    ``limit`` bounds the uncompressed bytes (safety rule 7). After the parser is done,
    :meth:`finish` reads both streams to their end (rule 8) and returns what they hashed to.
    """

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        kind = compression(raw.read(4))
        raw.seek(0)
        self.packed = _Digesting(raw, limit if kind == "none" else 1 << 62)
        if kind == "none":
            self.plain = self.packed
        else:
            stream = open_decompressed(cast(BinaryIO, self.packed))
            self.plain = _Digesting(cast(BinaryIO, stream), limit, _decompressor_errors(kind))
        self._queue: queue.Queue[_Item] = queue.Queue(_AHEAD)
        self._stop = threading.Event()
        self._chunk = b""
        self._pos = 0
        self._eof = False
        self._thread = threading.Thread(target=self._produce, name="ucore-unpack", daemon=True)
        self._thread.start()

    # --- the producer thread ------------------------------------------------------------------

    def _produce(self) -> None:
        try:
            while data := self.plain.read(_CHUNK):
                if not self._put(data):
                    return
            self.packed.drain()
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._put(exc)

    def _put(self, item: _Item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # --- the reader -----------------------------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (tarfile asks for its buffer size at a time)."""
        if self._pos == len(self._chunk):
            if self._eof:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if item is None:
                self._eof = True
                return b""
            self._chunk, self._pos = item, 0
        end = len(self._chunk) if size < 0 else min(len(self._chunk), self._pos + size)
        data = self._chunk[self._pos : end]
        self._pos = end
        return data

    def finish(self) -> tuple[tuple[Digest, int], tuple[Digest, int]]:
        """Read to the end of both streams; ``((blob digest, size), (diff_id, size))``."""
        while self.read(_CHUNK):
            pass
        self._thread.join()
        return (self.packed.digest, self.packed.count), (self.plain.digest, self.plain.count)

    def close(self) -> None:
        """Stop the producer (after an error the parser stops reading early)."""
        self._stop.set()
        self._thread.join()
