"""Layer and document blobs as image ingestion meets them: sniffing, storing gzip or tar layers, checks."""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from nixforge.errors import BuildFailed
from nixforge.oci.documents import LayerBlob
from nixforge.oci.layer_writer import LayerWriter
from nixforge.store.interfaces import IBlobStore

CHUNK = 1 << 20
"""Bytes read (and, for gzip, decompressed) at a time: memory stays bounded whatever the layer size."""

SMALL_LIMIT = 16 << 20
"""The largest JSON document (manifest, config, index) read into memory."""

GZIP_MAGIC = b"\x1f\x8b"
_OTHER_MAGIC = {
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}
UNSUPPORTED_COMPRESSIONS = frozenset(_OTHER_MAGIC.values())
"""What `sniff` recognises but ingestion refuses (only gzip and plain tar layers are served)."""


def sniff(head: bytes) -> str:
    """Classify the first bytes of a file: "gzip", "zstd", "xz", "bzip2", "tar" or "other"."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    for magic, kind in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return kind
    if _is_tar_header(head):
        return "tar"
    return "other"


def _is_tar_header(block: bytes) -> bool:
    """Tell whether a 512-byte block is a tar header (valid checksum) or an end-of-archive block."""
    if len(block) < tarfile.BLOCKSIZE:
        return False
    block = block[: tarfile.BLOCKSIZE]
    if block == tarfile.NUL * tarfile.BLOCKSIZE:
        return True
    field = block[148:156].split(b"\0", 1)[0].strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    return stored in (unsigned, signed)


class GzipDiffHasher:
    """Hash the uncompressed content of a gzip stream fed in pieces, with bounded output per step."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._inflate = zlib.decompressobj(31)
        self._trailing = False

    def update(self, data: bytes) -> None:
        """Feed compressed bytes; raise BuildFailed on corrupt data."""
        try:
            while data:
                if self._inflate.eof:
                    data = self._next_member(data)
                    if not data:
                        return
                self._hash.update(self._inflate.decompress(data, CHUNK))
                while self._inflate.unconsumed_tail and not self._inflate.eof:
                    self._hash.update(self._inflate.decompress(self._inflate.unconsumed_tail, CHUNK))
                data = self._inflate.unused_data if self._inflate.eof else b""
        except zlib.error as error:
            raise BuildFailed(f"corrupt gzip layer: {error}") from error

    def _next_member(self, data: bytes) -> bytes:
        """Start the next member of a multi-member stream, or accept zero padding after the end."""
        if not self._trailing and data.startswith(GZIP_MAGIC[:1]):
            self._inflate = zlib.decompressobj(31)
            return data
        if data.count(0) == len(data):
            self._trailing = True
            return b""
        raise BuildFailed("corrupt gzip layer: garbage after the end of the stream")

    def diff_id(self) -> str:
        """Finish; return `sha256:<hex>` of the uncompressed bytes, BuildFailed if truncated."""
        try:
            self._hash.update(self._inflate.flush())
        except zlib.error as error:
            raise BuildFailed(f"corrupt gzip layer: {error}") from error
        if not self._inflate.eof:
            raise BuildFailed("truncated gzip layer: the stream ends before its end marker")
        return "sha256:" + self._hash.hexdigest()


def store_gzip_layer(store: IBlobStore, chunks: Iterable[bytes]) -> LayerBlob:
    """Store a gzip layer byte for byte, computing its diff_id by streaming decompression."""
    blob = store.writer()
    try:
        hasher = GzipDiffHasher()
        for chunk in chunks:
            hasher.update(chunk)
            blob.write(chunk)
        diff_id = hasher.diff_id()
        digest, size = blob.commit()
    except BaseException:
        blob.abort()
        raise
    return LayerBlob(digest, size, diff_id)


def store_tar_layer(store: IBlobStore, chunks: Iterable[bytes]) -> LayerBlob:
    """Gzip an uncompressed layer tar into the store (both hashes in one pass)."""
    with LayerWriter(store) as writer:
        for chunk in chunks:
            writer.write(chunk)
        return writer.close()


def read_chunks(fileobj: BinaryIO, head: bytes = b"", expected_size: int | None = None) -> Iterator[bytes]:
    """Yield `head`, then the rest of `fileobj` in CHUNK-sized pieces.

    With `expected_size`, raise BuildFailed when the data ends early (a truncated archive).
    """
    seen = len(head)
    if head:
        yield head
    while chunk := fileobj.read(CHUNK):
        seen += len(chunk)
        yield chunk
    if expected_size is not None and seen != expected_size:
        raise BuildFailed(f"truncated docker-archive: a member has {seen} of {expected_size} bytes")


def check_diff_ids(config: Any, layers: list[LayerBlob]) -> None:
    """Raise BuildFailed unless the config's rootfs.diff_ids are exactly the layers' diff_ids."""
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    expected = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(expected, list):
        raise BuildFailed("image config has no rootfs.diff_ids")
    actual = [layer.diff_id for layer in layers]
    if expected != actual:
        raise BuildFailed(
            "image layers do not match the config's rootfs.diff_ids",
            {"config": expected, "layers": actual},
        )


def parse_json(data: bytes, what: str) -> Any:
    """Parse JSON, raising BuildFailed with `what` in the message when it is not valid."""
    try:
        return json.loads(data)
    except ValueError as error:
        raise BuildFailed(f"{what} is not valid JSON: {error}") from error
