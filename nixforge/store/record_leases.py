"""Leases shared by replicas, as records: created with If-None-Match, renewed with If-Match, deleted at the end.

A holder that dies stops renewing. Expiry is judged on the waiter's own monotonic clock: a lease
whose version has not changed for `ttl` seconds since this process first saw that version is
expired, and one waiter takes it over by compare-and-swap. Two machines' clocks are never compared.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable

from attrs import frozen

from nixforge.store.interfaces import IRecordStore
from nixforge.store.records import encode_json

OBSERVED_KEPT = 1024
"""Leases of other holders whose versions a waiter remembers; past that, the oldest sighting is dropped."""


@frozen
class Lease:
    """A lease this process holds: its record key and the version it wrote last."""

    key: str
    version: str
    renewals: int = 0


class RecordLeases:
    """Take, renew and release leases named by `leases/<name>.json` in a record store. Blocks."""

    def __init__(self, records: IRecordStore, ttl: float, monotonic: Callable[[], float] = time.monotonic,
                 holder: str | None = None, prefix: str = "leases/") -> None:
        self.records = records
        self.ttl = ttl
        self.monotonic = monotonic
        self.holder = holder or uuid.uuid4().hex
        self.prefix = prefix
        self.takeovers = 0
        self._observed: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _body(self, renewals: int) -> bytes:
        return encode_json({"holder": self.holder, "renewals": renewals})

    def acquire(self, name: str) -> Lease | None:
        """Take the lease `name` if it is free or expired; None while another holder keeps it alive."""
        key = f"{self.prefix}{name}.json"
        while True:
            version = self.records.swap(key, self._body(0), None)
            if version is not None:
                with self._lock:
                    self._observed.pop(key, None)
                return Lease(key, version)
            stored = self.records.get(key)
            if stored is None:
                continue  # released meanwhile: try again
            now = self.monotonic()
            with self._lock:
                seen = self._observed.get(key)
                if seen is None or seen[0] != stored.version:
                    self._observed.pop(key, None)
                    self._observed[key] = (stored.version, now)
                    while len(self._observed) > OBSERVED_KEPT:  # the oldest sightings: their clocks restart
                        del self._observed[next(iter(self._observed))]
                    return None
            if now - seen[1] < self.ttl:
                return None
            version = self.records.swap(key, self._body(0), stored.version)
            if version is None:
                return None  # another waiter took it over first
            with self._lock:
                self._observed.pop(key, None)
                self.takeovers += 1
            return Lease(key, version)

    def holder_of(self, name: str) -> str | None:
        """Who holds lease `name` now (as stored), or None."""
        stored = self.records.get(f"{self.prefix}{name}.json")
        if stored is None:
            return None
        try:
            return str(json.loads(stored.value)["holder"])
        except (ValueError, KeyError, TypeError):
            return None

    def renew(self, lease: Lease) -> Lease | None:
        """Show the lease is alive (a new version); None when it was lost (taken over after expiry)."""
        version = self.records.swap(lease.key, self._body(lease.renewals + 1), lease.version)
        return None if version is None else Lease(lease.key, version, lease.renewals + 1)

    def release(self, lease: Lease) -> bool:
        """Delete the lease if still ours; return whether it was."""
        return self.records.delete(lease.key, lease.version)
