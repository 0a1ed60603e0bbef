"""A stored blob ready to serve: its size from the store's memory or asked off the reactor, and how to read it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from nixforge.images.interfaces import BlobFile
from nixforge.store.interfaces import IBlobStore, IBlobStreams


def stored_size(store: IBlobStore, digest: str, run_in_thread: Callable[..., Deferred[Any]]) -> Deferred[int | None]:
    """The blob's size, or None when the store does not hold it.

    On the reactor a store answers only from memory. A replica sharing a bucket has not seen the
    blobs other replicas stored since it started: those are asked for once in a worker thread (one
    `HEAD`), and remembered by the store from then on.
    """
    size = store.size(digest)
    if size is not None:
        return succeed(size)
    return run_in_thread(store.size, digest)


def stored_blob(store: IBlobStore, digest: str,
                run_in_thread: Callable[..., Deferred[Any]]) -> Deferred[BlobFile | None]:
    """The blob as a BlobFile (ranged reads straight from a store across the network), or None when absent.

    A size the store knows fires at once, with no coroutine: blob GETs and HEADs are a hot path.
    """
    ranged = None
    if IBlobStreams.providedBy(store):
        def ranged(offset: int, length: int) -> Any:
            return store.stream(digest, offset, length)

    def found(size: int | None) -> BlobFile | None:
        if size is None:
            return None
        return BlobFile(digest=digest, size=size, opener=lambda: store.open(digest), ranged=ranged)
    return stored_size(store, digest, run_in_thread).addCallback(found)
