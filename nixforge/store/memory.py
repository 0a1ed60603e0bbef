"""In-memory blob store (and a re-export of the in-memory tag index) for tests and experiments."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

from zope.interface import implementer

from nixforge.errors import BlobUnknown, DigestInvalid
from nixforge.store.interfaces import IBlobWriter, ICollectableBlobStore, IStoreKeeper
from nixforge.store.leases import BlobLeases
from nixforge.store.tag_index import MemoryTagIndex

__all__ = ["MemoryBlobStore", "MemoryBlobWriter", "MemoryTagIndex", "NoStoreKeeper"]


@implementer(IStoreKeeper)
class NoStoreKeeper:
    """Housekeeping that does nothing (no GC): the default of an images service in tests."""

    def pulled(self, name: str, tag: str) -> None:
        """Ignore the pull."""

    def begin_build(self) -> int:
        """Hand out a token that protects nothing."""
        return 0

    def end_build(self, token: int) -> None:
        """Nothing to end."""

    def stored(self) -> None:
        """Nothing to collect."""

    def full(self) -> None:
        """Nothing to collect."""


@implementer(IBlobWriter)
class MemoryBlobWriter:
    """Collect bytes in memory; `commit` verifies and publishes them into the store's dict."""

    def __init__(self, store: MemoryBlobStore) -> None:
        self._store = store
        self._buffer = io.BytesIO()
        self._hash = hashlib.sha256()
        self._done = False

    def write(self, data: bytes) -> None:
        """Append bytes, hashing them."""
        if self._done:
            raise ValueError("blob writer is already committed or aborted")
        self._buffer.write(data)
        self._hash.update(data)

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        """Verify against `expected_digest` if given, then publish; return `(digest, size)`."""
        if self._done:
            raise ValueError("blob writer is already committed or aborted")
        self._done = True
        digest = "sha256:" + self._hash.hexdigest()
        data = self._buffer.getvalue()
        self._buffer = io.BytesIO()
        if expected_digest is not None and expected_digest != digest:
            raise DigestInvalid(
                "blob content does not match its digest",
                {"expected": str(expected_digest)[:200], "actual": digest},
            )
        self._store._publish(digest, data)
        return digest, len(data)

    def abort(self) -> None:
        """Drop the collected bytes; nothing becomes visible. Idempotent."""
        self._done = True
        self._buffer = io.BytesIO()


@implementer(ICollectableBlobStore)
class MemoryBlobStore:
    """Blobs in a dict keyed by digest; thread-safe, never durable."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self.leases = BlobLeases()
        self._lock = self.leases.lock

    def _publish(self, digest: str, data: bytes) -> None:
        """Make `data` visible under `digest` unless it already is."""
        with self._lock:
            self._blobs.setdefault(digest, data)
            self.leases.touch_locked(digest)

    def size(self, digest: str) -> int | None:
        """Return the blob's size, or None when absent; a present blob counts as in use (leases)."""
        with self._lock:
            data = self._blobs.get(digest)
            if data is not None:
                self.leases.touch_locked(digest)
        return None if data is None else len(data)

    def digests(self) -> Iterator[tuple[str, int]]:
        """Yield `(digest, size)` of every stored blob."""
        with self._lock:
            sizes = [(digest, len(data)) for digest, data in self._blobs.items()]
        yield from sizes

    def delete(self, digest: str, floor: int) -> int | None:
        """Drop blob `digest` unless touched at or after `floor`; return the bytes freed, or None."""
        with self.leases.unless_protected(digest, floor) as may_go:
            data = self._blobs.pop(digest, None) if may_go else None
        return None if data is None else len(data)

    def remove_abandoned(self) -> int:
        """Nothing outlives a memory store's writers: return 0."""
        return 0

    def open(self, digest: str) -> io.BytesIO:
        """Return a BytesIO over the blob; BlobUnknown when absent."""
        return io.BytesIO(self.read(digest))

    def read(self, digest: str) -> bytes:
        """Return the blob's bytes; BlobUnknown when absent."""
        data = self._blobs.get(digest)
        if data is None:
            raise BlobUnknown("blob unknown to registry", {"digest": str(digest)[:200]})
        return data

    def writer(self) -> MemoryBlobWriter:
        """Start writing a new blob."""
        return MemoryBlobWriter(self)

    def put(self, data: bytes) -> tuple[str, int]:
        """Store bytes (idempotent); return `(digest, size)`."""
        writer = self.writer()
        writer.write(data)
        return writer.commit()
