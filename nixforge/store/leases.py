"""Which blobs running builds may still reference: every blob touched since a build began is kept.

A build writes or reuses blobs (a layer-cache hit only checks that the blob exists) long before
its tag record reaches the index, so the index alone cannot tell GC what is in use. The blob
store therefore *touches* every blob it publishes or finds present, under one lock, numbering the
touches; a build holds a lease from before its first touch until its record is in the index. GC
spares every blob touched at or after the oldest live lease (or after GC itself began), and
checks this under the same lock as it unlinks, so "exists" and "deleted" never interleave.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class BlobLeases:
    """Touch numbers per blob digest and the live leases of builds; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._sequence = 0
        self._touched: dict[str, int] = {}
        self._leases: dict[int, int] = {}
        self._next_token = 0

    def touch_locked(self, digest: str) -> None:
        """Record that `digest` is in use now; the caller holds `lock`."""
        self._sequence += 1
        self._touched[digest] = self._sequence

    def begin(self) -> int:
        """Open a lease: blobs touched from now on are spared until `end`; return its token."""
        with self.lock:
            self._next_token += 1
            self._leases[self._next_token] = self._sequence + 1
            return self._next_token

    def end(self, token: int) -> None:
        """Close a lease (its build's record is in the index, or the build failed). Idempotent."""
        with self.lock:
            self._leases.pop(token, None)

    def floor(self) -> int:
        """The lowest touch number still protected: that of the oldest live lease, else the next one."""
        with self.lock:
            return min([*self._leases.values(), self._sequence + 1])

    def active(self) -> int:
        """How many leases are open."""
        with self.lock:
            return len(self._leases)

    @contextlib.contextmanager
    def unless_protected(self, digest: str, floor: int) -> Iterator[bool]:
        """Hold the lock; yield True when `digest` was not touched at or after `floor` (may go)."""
        with self.lock:
            yield self._touched.get(digest, 0) < floor

    def forget_before(self, floor: int) -> None:
        """Drop touch numbers below `floor`: no lease or GC needs them any more."""
        with self.lock:
            self._touched = {d: n for d, n in self._touched.items() if n >= floor}
