"""A file-like sink that gzips a layer tar into the blob store, hashing both forms in one pass."""

from __future__ import annotations

import hashlib
import zlib

from nixforge.oci.documents import LayerBlob
from nixforge.store.interfaces import IBlobStore

# wbits=31: a gzip stream whose header has no file name and mtime 0, so equal input gives equal bytes.
_GZIP_WBITS = 31


def layer_compressor(level: int = 6) -> zlib._Compress:
    """The gzip compressor of every layer: no file name, mtime 0, so equal tars give equal bytes."""
    return zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)


def compress_layer(tar: bytes, level: int = 6) -> tuple[bytes, str]:
    """Gzip a small in-memory layer tar as LayerWriter would; return (gzip bytes, diff_id)."""
    compressor = layer_compressor(level)
    return compressor.compress(tar) + compressor.flush(), "sha256:" + hashlib.sha256(tar).hexdigest()


class LayerWriter:
    """Write an uncompressed layer tar into `write`; `close` publishes the gzip blob.

    Blocking (hashing, compression, disk): use it from a worker thread, never the reactor.
    Usable as `tarfile.open(fileobj=writer, mode="w|")`.
    """

    def __init__(self, store: IBlobStore, level: int = 6) -> None:
        self._diff = hashlib.sha256()
        self._gzip = layer_compressor(level)
        self._blob = store.writer()
        self._result: LayerBlob | None = None

    def write(self, data: bytes) -> int:
        """Feed uncompressed tar bytes."""
        self._diff.update(data)
        compressed = self._gzip.compress(data)
        if compressed:
            self._blob.write(compressed)
        return len(data)

    def close(self) -> LayerBlob:
        """Finish the gzip stream, publish the blob and return its descriptor."""
        if self._result is None:
            self._blob.write(self._gzip.flush())
            digest, size = self._blob.commit()
            self._result = LayerBlob(digest, size, "sha256:" + self._diff.hexdigest())
        return self._result

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._result is None:
            self._blob.abort()

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is not None:
            self.abort()
