"""When each (name, tag) was last pulled: in memory on every pull, saved to the store only now and then."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from twisted.logger import Logger

from nixforge.store.interfaces import IRecordStore
from nixforge.store.records import FilesystemRecordStore, update_json

log = Logger()
_FORMAT = 1


def _times_from_json(data: Any) -> dict[tuple[str, str], float]:
    """The (name, tag) → time pairs of a stored document; raise ValueError for anything else."""
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("pulls"), list):
        raise ValueError("not a pull times file of a known format")
    times = {}
    for entry in data["pulls"]:
        if isinstance(entry, list) and len(entry) == 3:
            name, tag, when = entry
            if isinstance(name, str) and isinstance(tag, str) and isinstance(when, (int, float)):
                times[(name, tag)] = float(when)
    return times


class PullTimes:
    """(name, tag) → last pull time; `record` is a dict update, `save` merges into one record.

    GC saves before each run and the registry at shutdown, so a crash loses at most the pulls since
    the last run: an image looks a little less recently used, nothing worse. Saving merges the
    stored times (the latest of each pair wins), so every replica's pulls count.
    """

    def __init__(self, records: IRecordStore, key: str = "pulls.json") -> None:
        self.records = records
        self.key = key
        self._times: dict[tuple[str, str], float] = {}
        self._forgotten: set[tuple[str, str]] = set()
        self._dirty = False
        self._lock = threading.Lock()
        self._load()

    @classmethod
    def in_file(cls, path: str) -> PullTimes:
        """Pull times kept in the JSON file `path`."""
        return cls(FilesystemRecordStore(os.path.dirname(os.path.abspath(path))), os.path.basename(path))

    def _load(self) -> None:
        try:
            stored = self.records.get(self.key)
            if stored is not None:
                self._times.update(_times_from_json(json.loads(stored.value)))
        except Exception as error:  # a bad record costs only recency, never start-up
            log.warn("ignoring unreadable pull times {path}: {error}", path=self.key, error=error)

    def record(self, name: str, tag: str, when: float) -> None:
        """Remember that name:tag was pulled at `when` (no store work)."""
        with self._lock:
            self._times[(name, tag)] = max(when, self._times.get((name, tag), when))
            self._forgotten.discard((name, tag))
            self._dirty = True

    def take(self, other: PullTimes) -> None:
        """Remember every pull `other` knows (the later time of each pair wins); no store work."""
        with other._lock:
            theirs = dict(other._times)
        for (name, tag), when in theirs.items():
            self.record(name, tag, when)

    def get(self, name: str, tag: str) -> float | None:
        """The last pull time of name:tag, or None if never pulled (since it was built)."""
        with self._lock:
            return self._times.get((name, tag))

    def forget(self, name: str, tag: str) -> None:
        """Drop name:tag (its image was evicted)."""
        with self._lock:
            self._forgotten.add((name, tag))
            if self._times.pop((name, tag), None) is not None:
                self._dirty = True

    def save(self) -> bool:
        """Merge the times into the stored record if they changed since the last save; return whether it wrote.

        Blocks. The stored times of other replicas are merged into memory too.
        """
        with self._lock:
            if not self._dirty:
                return False
            self._dirty = False
            mine, forgotten = dict(self._times), set(self._forgotten)

        def merge(current: Any | None) -> dict[str, Any]:
            try:
                stored = _times_from_json(current) if current is not None else {}
            except ValueError:
                stored = {}
            merged = {pair: when for pair, when in stored.items() if pair not in forgotten}
            for pair, when in mine.items():
                merged[pair] = max(when, merged.get(pair, when))
            with self._lock:
                for pair, when in merged.items():
                    if pair not in self._forgotten:
                        self._times[pair] = max(when, self._times.get(pair, when))
            return {"format": _FORMAT, "pulls": sorted([n, t, w] for (n, t), w in merged.items())}

        try:
            update_json(self.records, self.key, merge)
        except BaseException:
            with self._lock:
                self._dirty = True
            raise
        with self._lock:
            self._forgotten -= forgotten
        return True
