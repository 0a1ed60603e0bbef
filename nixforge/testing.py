"""Fakes for unit tests, behind the same zope interfaces as the real parts (as txacme keeps its own)."""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import implementer

from nixforge.store.interfaces import IRecordStore, StoredRecord


@implementer(IRecordStore)
class RacingRecordStore:
    """A record store where another writer acts just before the next conditional write (`swap`/`delete`).

    `race` runs once, on the inner store, right before the first conditional write after it is
    set: the deterministic way to test that a compare-and-swap loop never loses an update.
    """

    def __init__(self, inner: IRecordStore) -> None:
        self.inner = inner
        self.race: Callable[[IRecordStore], object] | None = None
        self.conflicts = 0

    def _run_race(self) -> None:
        race, self.race = self.race, None
        if race is not None:
            race(self.inner)

    def get(self, key: str) -> StoredRecord | None:
        """The inner store's record."""
        return self.inner.get(key)

    def put(self, key: str, value: bytes) -> str:
        """Write through."""
        return self.inner.put(key, value)

    def swap(self, key: str, value: bytes, version: str | None) -> str | None:
        """Let the race run first, then swap (counting a lost race)."""
        self._run_race()
        written = self.inner.swap(key, value, version)
        self.conflicts += written is None
        return written

    def delete(self, key: str, version: str | None = None) -> bool:
        """Let the race run first, then delete."""
        self._run_race()
        return self.inner.delete(key, version)

    def keys(self, prefix: str) -> list[str]:
        """The inner store's keys."""
        return self.inner.keys(prefix)

    def versions(self, prefix: str) -> dict[str, str]:
        """The inner store's versions."""
        return self.inner.versions(prefix)
