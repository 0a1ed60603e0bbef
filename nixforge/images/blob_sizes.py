"""The size of a stored blob for serving it: from the store's memory at once, else asked off the reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from nixforge.store.interfaces import IBlobStore


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
