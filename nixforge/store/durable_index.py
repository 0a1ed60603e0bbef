"""The tag index kept in a record store: one record per tag, one history record per repository."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

from attrs import asdict
from twisted.logger import Logger
from zope.interface import implementer

from nixforge.store.interfaces import IRecordStore, IRetainedIndex, TagRecord
from nixforge.store.records import FilesystemRecordStore, encode_json
from nixforge.store.tag_index import (
    _FORMAT,
    _HISTORY_FORMAT,
    DEFAULT_RETENTION,
    HISTORY_LIMIT,
    MemoryTagIndex,
    Superseded,
    _history_from_json,
    _key,
    _record_from_json,
)

log = Logger()


@implementer(IRetainedIndex)
class RecordTagIndex:
    """Records as `<prefix>r-<sha256(name, tag)>.json`, superseded digests as `<prefix>d-<sha256(name)>.json`.

    Keys are hashes, so no name or tag can escape; the name and tag live in the JSON. Everything
    is read at construction; reads are then answered from memory. Every write is a
    compare-and-swap on the stored record, so replicas sharing the store never lose an update, and
    a record built before the stored one never replaces it. Writes block.
    """

    def __init__(self, records: IRecordStore, clock: Callable[[], float] = time.time,
                 retention: float = DEFAULT_RETENTION, prefix: str = "index/") -> None:
        self.backend = records
        self.prefix = prefix
        self.clock = clock
        self._memory = MemoryTagIndex(clock, retention)
        self._write_lock = threading.Lock()
        self._seen: dict[str, str] = {}
        self._by_key: dict[str, TagRecord] = {}
        self._load()

    def record_key(self, name: str, tag: str) -> str:
        """The key of (name, tag)'s record."""
        return f"{self.prefix}r-{_key(name, tag)}.json"

    def history_key(self, name: str) -> str:
        """The key of `name`'s superseded digests."""
        return f"{self.prefix}d-{_key(name)}.json"

    def where(self, key: str) -> str:
        """Where record `key` lives, for log lines."""
        return key

    def written_at(self, key: str) -> float:
        """When record `key` was written, for histories of the first format (no times): now."""
        return self.clock()

    def _load(self) -> None:
        """Read every record and history; skip (with a warning) what cannot be read."""
        with self._write_lock:
            self._refresh_locked()

    def refresh(self) -> int:
        """Read what other replicas changed since the last look (one listing); return how many records.

        New and changed records are taken, records another replica's GC removed are forgotten.
        Blocks.
        """
        with self._write_lock:
            return self._refresh_locked()

    def reload(self, name: str, tag: str) -> TagRecord | None:
        """Read (name, tag)'s record from the store now (another replica may have written it). Blocks."""
        key = self.record_key(name, tag)
        with self._write_lock:
            stored = self.backend.get(key)
            if stored is not None and self._seen.get(key) != stored.version:
                self._seen[key] = stored.version
                self._take(key, stored.value)
            return self._memory.get(name, tag)

    def _refresh_locked(self) -> int:
        listing = self.backend.versions(self.prefix)
        changed = 0
        for key, version in sorted(listing.items()):
            if self._seen.get(key) == version:
                continue
            stored = self.backend.get(key)
            if stored is None:
                continue
            self._seen[key] = stored.version
            changed += self._take(key, stored.value)
        for key in [key for key in self._by_key if key not in listing]:
            record = self._by_key.pop(key)
            self._seen.pop(key, None)
            changed += self._memory.remove(record)
        return changed

    def _take(self, key: str, value: bytes) -> int:
        """Put a stored record or history into memory; return 1 if a record changed, else 0."""
        base = key[len(self.prefix):]
        try:
            data = json.loads(value)
            if base.startswith("r-"):
                record = _record_from_json(data)
                if self.record_key(record.name, record.tag) != key:
                    raise ValueError("key does not match the record's name and tag")
                self._by_key[key] = record
                if self._memory.get(record.name, record.tag) != record:
                    self._memory.put(record)
                    return 1
            elif base.startswith("d-"):
                name, entries = _history_from_json(data, self.written_at(key))
                if self.history_key(name) != key:
                    raise ValueError("key does not match the history's name")
                self._memory.restore(name, entries)
            else:
                raise ValueError("unexpected record in the index")
        except Exception as error:  # a bad record must never stop start-up
            log.warn("skipping unreadable tag index file {path}: {error}", path=self.where(key), error=error)
        return 0

    def _stored_record(self, key: str) -> tuple[TagRecord | None, str | None, bool]:
        """(the stored record or None, its version, whether anything is stored at all)."""
        stored = self.backend.get(key)
        if stored is None:
            return None, None, False
        try:
            return _record_from_json(json.loads(stored.value)), stored.version, True
        except ValueError:
            return None, stored.version, True

    def _write_record(self, record: TagRecord, expected: Callable[[TagRecord | None], bool]) -> TagRecord | None:
        """Swap `record` in while `expected(stored)` holds; return the stored record that stopped it."""
        key = self.record_key(record.name, record.tag)
        body = encode_json({"format": _FORMAT, **asdict(record)})
        while True:
            stored, version, _ = self._stored_record(key)
            if not expected(stored):
                return stored
            written = self.backend.swap(key, body, version)
            if written is not None:
                self._seen[key], self._by_key[key] = written, record
                return None

    def _write_history(self, name: str, without_tag: str | None = None) -> None:
        """Merge memory's superseded digests of `name` into the stored ones (optionally dropping a tag's)."""
        key = self.history_key(name)
        horizon = self.clock() - self._memory.retention
        current = {digest for tag in self._memory.tags(name)
                   for digest in (self._memory.get(name, tag) or _NO_RECORD).digests()}
        while True:
            stored = self.backend.get(key)
            merged: dict[str, Superseded] = {}
            if stored is not None:
                try:
                    merged = {s.digest: s for s in _history_from_json(json.loads(stored.value), self.clock())[1]}
                except ValueError:
                    merged = {}
            for entry in self._memory.superseded(name):
                if entry.at >= merged.get(entry.digest, entry).at:
                    merged[entry.digest] = entry
            entries = sorted((s for s in merged.values() if s.at > horizon and s.tag != without_tag
                              and s.digest not in current), key=lambda s: (s.at, s.digest))[-HISTORY_LIMIT:]
            if not entries:
                if stored is None or self.backend.delete(key, stored.version):
                    return
                continue
            document = {"format": _HISTORY_FORMAT, "name": name,
                        "superseded": [[s.digest, s.tag, s.at] for s in entries]}
            if self.backend.swap(key, encode_json(document), None if stored is None else stored.version):
                return

    def put(self, record: TagRecord) -> None:
        """Update memory, write the history (if it changed), then swap the record in. Blocks.

        A record built before the stored one is not written: memory takes the stored one.
        """
        with self._write_lock:
            before = self._memory.superseded(record.name)
            self._memory.put(record)
            if self._memory.superseded(record.name) != before:
                self._write_history(record.name)
            newer = self._write_record(record, lambda stored: stored is None or stored.built_at <= record.built_at)
            if newer is not None:
                self._memory.put(newer)

    def replace(self, old: TagRecord, new: TagRecord) -> bool:
        """Put `new` only if `old` is still current, here and in the store; return whether it was."""
        with self._write_lock:
            if self._memory.get(old.name, old.tag) != old:
                return False
            if self._write_record(new, lambda stored: stored == old) is not None:
                return False
            self._memory.put(new)
            return True

    def remove(self, record: TagRecord) -> bool:
        """Forget `record` (if still current) and its tag's superseded digests. Blocks.

        The history is rewritten before the record goes, so a failure or a crash never leaves
        superseded digests stored that memory has already let GC delete.
        """
        with self._write_lock:
            if self._memory.get(record.name, record.tag) != record:
                return False
            self._write_history(record.name, without_tag=record.tag)
            key = self.record_key(record.name, record.tag)
            while True:
                stored, version, present = self._stored_record(key)
                if not present or stored != record or self.backend.delete(key, version):
                    break
            self._seen.pop(key, None)
            self._by_key.pop(key, None)
            return self._memory.remove(record)

    def forget_expired(self) -> list[str]:
        """Drop superseded digests past the retention window, stored ones too; return the names changed."""
        with self._write_lock:
            changed = self._memory.forget_expired()
            for name in changed:
                self._write_history(name)
            return changed

    def get(self, name: str, tag: str) -> TagRecord | None:
        """Return the record, from memory."""
        return self._memory.get(name, tag)

    def records(self) -> list[TagRecord]:
        """Every current record (memory)."""
        return self._memory.records()

    def superseded(self, name: str) -> list[Superseded]:
        """Return `name`'s superseded digests within the retention window."""
        return self._memory.superseded(name)

    def tags(self, name: str) -> list[str]:
        """Return the repository's tags, sorted."""
        return self._memory.tags(name)

    def names(self) -> list[str]:
        """Return every repository with at least one tag, sorted."""
        return self._memory.names()

    def has_manifest(self, name: str, digest: str) -> bool:
        """Tell whether `digest` is a current manifest of `name` or one superseded within the window."""
        return self._memory.has_manifest(name, digest)


_NO_RECORD = TagRecord(name="", tag="", oci_digest="", docker_digest="", built_at=0.0, source="")


class FilesystemTagIndex(RecordTagIndex):
    """The record tag index in `<root>/index/` (the data-dir layout of earlier versions, unchanged)."""

    def __init__(self, root: str, clock: Callable[[], float] = time.time,
                 retention: float = DEFAULT_RETENTION) -> None:
        self.file_records = FilesystemRecordStore(root)
        self.directory = os.path.join(self.file_records.root, "index")
        os.makedirs(self.directory, exist_ok=True)
        self.file_records.remove_temporaries(["index"])
        super().__init__(self.file_records, clock, retention)

    def record_path(self, name: str, tag: str) -> str:
        """Return the file holding the record of (name, tag)."""
        return self.file_records.path(self.record_key(name, tag))

    def history_path(self, name: str) -> str:
        """Return the file holding `name`'s superseded manifest digests."""
        return self.file_records.path(self.history_key(name))

    def where(self, key: str) -> str:
        """The file of record `key`."""
        return self.file_records.path(key)

    def written_at(self, key: str) -> float:
        """The file's modification time."""
        return os.stat(self.file_records.path(key)).st_mtime

