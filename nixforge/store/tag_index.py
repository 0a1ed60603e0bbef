"""The durable (name, tag) → TagRecord index, with each tag's superseded digests kept for a while."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.logger import Logger
from zope.interface import implementer

from nixforge.store.interfaces import IRetainedIndex, TagRecord

log = Logger()

_FORMAT = 1
_HISTORY_FORMAT = 2
_TEMP_PREFIX = ".tmp-"
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "tag": (str,), "oci_digest": (str,), "docker_digest": (str,),
    "built_at": (int, float), "source": (str,), "immutable": (bool,),
}
DEFAULT_RETENTION = 7 * 24 * 3600.0
"""Seconds a tag's superseded manifest digests stay resolvable (NIXFORGE_RETENTION)."""
HISTORY_LIMIT = 64
"""At most this many superseded digests are kept per repository, the newest ones."""


@frozen
class Superseded:
    """A manifest digest a tag served before a rebuild, and when it stopped being current."""

    digest: str
    tag: str
    at: float


@implementer(IRetainedIndex)
class MemoryTagIndex:
    """Records and per-name superseded digests in dicts; thread-safe, never durable."""

    def __init__(self, clock: Callable[[], float] = time.time, retention: float = DEFAULT_RETENTION) -> None:
        self.clock = clock
        self.retention = retention
        self._records: dict[str, dict[str, TagRecord]] = {}
        self._history: dict[str, dict[str, Superseded]] = {}
        self._lock = threading.Lock()

    def get(self, name: str, tag: str) -> TagRecord | None:
        """Return the record for (name, tag), or None."""
        with self._lock:
            return self._records.get(name, {}).get(tag)

    def put(self, record: TagRecord) -> None:
        """Replace the record for (record.name, record.tag); its old digests become superseded."""
        with self._lock:
            self._put_locked(record)

    def _put_locked(self, record: TagRecord) -> None:
        """`put` with the lock held."""
        old = self._records.setdefault(record.name, {}).get(record.tag)
        self._records[record.name][record.tag] = record
        history = self._history.setdefault(record.name, {})
        current = record.digests()
        for digest in current:
            history.pop(digest, None)
        if old is not None:
            now = self.clock()
            for digest in old.digests():
                if digest not in current:
                    history[digest] = Superseded(digest, record.tag, now)
        self._bound(record.name)

    def _bound(self, name: str) -> None:
        """Keep `name`'s newest HISTORY_LIMIT superseded digests; the caller holds the lock."""
        history = self._history.get(name, {})
        if len(history) > HISTORY_LIMIT:
            newest = sorted(history.values(), key=lambda s: s.at, reverse=True)[:HISTORY_LIMIT]
            self._history[name] = {s.digest: s for s in newest}

    def restore(self, name: str, entries: list[Superseded]) -> None:
        """Add superseded digests read back from disk."""
        with self._lock:
            history = self._history.setdefault(name, {})
            for entry in entries:
                history[entry.digest] = entry
            self._bound(name)

    def superseded(self, name: str) -> list[Superseded]:
        """Return `name`'s superseded digests still within the retention window."""
        horizon = self.clock() - self.retention
        with self._lock:
            return [s for s in self._history.get(name, {}).values() if s.at > horizon]

    def records(self) -> list[TagRecord]:
        """Return every current record."""
        with self._lock:
            return [record for tags in self._records.values() for record in tags.values()]

    def remove(self, record: TagRecord) -> bool:
        """Forget (record.name, record.tag) and its superseded digests, if `record` is still current."""
        with self._lock:
            tags = self._records.get(record.name, {})
            if tags.get(record.tag) != record:
                return False
            del tags[record.tag]
            history = self._history.get(record.name, {})
            for digest in [d for d, s in history.items() if s.tag == record.tag]:
                del history[digest]
            return True

    def forget_expired(self) -> list[str]:
        """Drop superseded digests older than the retention window; return the names that changed."""
        horizon = self.clock() - self.retention
        changed = []
        with self._lock:
            for name, history in self._history.items():
                expired = [d for d, s in history.items() if s.at <= horizon]
                for digest in expired:
                    del history[digest]
                if expired:
                    changed.append(name)
        return changed

    def replace(self, old: TagRecord, new: TagRecord) -> bool:
        """Put `new` only if `old` is still the current record of its tag (GC may have evicted it)."""
        with self._lock:
            if self._records.get(old.name, {}).get(old.tag) != old:
                return False
            self._put_locked(new)
            return True

    def tags(self, name: str) -> list[str]:
        """Return the repository's tags, sorted."""
        with self._lock:
            return sorted(self._records.get(name, {}))

    def names(self) -> list[str]:
        """Return every repository with at least one tag, sorted."""
        with self._lock:
            return sorted(name for name, tags in self._records.items() if tags)

    def has_manifest(self, name: str, digest: str) -> bool:
        """Tell whether `digest` is a manifest of a current record of `name`, or a retained old one."""
        with self._lock:
            for record in self._records.get(name, {}).values():
                if digest in record.digests():
                    return True
            entry = self._history.get(name, {}).get(digest)
        return entry is not None and entry.at > self.clock() - self.retention


def _key(*parts: str) -> str:
    """Hash the parts into a fixed-length, path-safe file name stem."""
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _record_from_json(data: Any) -> TagRecord:
    """Build a TagRecord from a decoded record file, or raise ValueError."""
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("not a tag record of a known format")
    fields = {}
    for field, types in _FIELD_TYPES.items():
        value = data.get(field)
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ValueError(f"field {field!r} is missing or has the wrong type")
        fields[field] = value
    manifests = data.get("manifests", [])  # absent in records written before image indexes
    if not isinstance(manifests, list) or not all(isinstance(digest, str) for digest in manifests):
        raise ValueError("field 'manifests' is not a list of digests")
    return TagRecord(**fields, manifests=tuple(manifests))


def _history_from_json(data: Any, written_at: float) -> tuple[str, list[Superseded]]:
    """Read a history file: format 2 (digest, tag, time) entries, or format 1's bare digest list."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError("not a history file")
    if data.get("format") == _HISTORY_FORMAT:
        entries = data.get("superseded")
        if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], str)
            and isinstance(e[2], (int, float)) and not isinstance(e[2], bool) for e in entries
        ):
            raise ValueError("superseded is not a list of [digest, tag, time]")
        return data["name"], [Superseded(d, t, float(at)) for d, t, at in entries]
    digests = data.get("digests")
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        raise ValueError("digests is not a list of strings")
    # Format 1 kept every digest ever, without times: count them superseded when it was written.
    return data["name"], [Superseded(d, "", written_at) for d in digests]


