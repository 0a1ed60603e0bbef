"""The durable record of revisions nixforge locked each flake to, and the tags that locked them."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from nixforge.store.interfaces import ILockedRevisions, IRecordStore
from nixforge.store.records import FilesystemRecordStore, update_json

log = Logger()

_FORMAT = 1


@implementer(ILockedRevisions)
class MemoryLockedRevisions:
    """(flake, revision) → tags in a dict; thread-safe, never durable."""

    def __init__(self) -> None:
        self._refs: dict[tuple[str, str], frozenset[str]] = {}
        self._lock = threading.Lock()

    def record(self, flake: str, revision: str, ref: str) -> None:
        """Note that `ref` locked `flake` to `revision`."""
        with self._lock:
            key = (flake, revision)
            self._refs[key] = self._refs.get(key, frozenset()) | {ref}

    def refs(self, flake: str, revision: str) -> frozenset[str]:
        """Return the tags that locked `flake` to `revision`."""
        with self._lock:
            return self._refs.get((flake, revision), frozenset())


def _file_stem(flake: str, revision: str) -> str:
    """A fixed-length, path-safe name for one (flake, revision)."""
    return hashlib.sha256(f"{flake}\0{revision}".encode("utf-8", "surrogatepass")).hexdigest()


def _entry_from_json(data: Any) -> tuple[str, str, list[str]]:
    """(flake, revision, refs) from a decoded file, or raise ValueError."""
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("not a locked-revision file of a known format")
    flake, revision, refs = data.get("flake"), data.get("revision"), data.get("refs")
    if not isinstance(flake, str) or not isinstance(revision, str):
        raise ValueError("flake or revision is missing")
    if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
        raise ValueError("refs is not a list of strings")
    return flake, revision, refs


@implementer(ILockedRevisions)
class RecordLockedRevisions:
    """One record per (flake, revision): `<prefix><sha256(flake, revision)>.json`.

    The record holds the flake, the revision and the sorted tags that locked it; a new tag is
    merged in by compare-and-swap, so replicas sharing the store never drop each other's tags.
    Everything is read at construction; `refs` is then answered from memory.
    """

    def __init__(self, records: IRecordStore, prefix: str = "revisions/") -> None:
        self.records = records
        self.prefix = prefix
        self._memory = MemoryLockedRevisions()
        self._write_lock = threading.Lock()
        self._seen: dict[str, str] = {}
        self._load()

    def key(self, flake: str, revision: str) -> str:
        """The key of (flake, revision)'s record."""
        return f"{self.prefix}{_file_stem(flake, revision)}.json"

    def where(self, key: str) -> str:
        """Where record `key` lives, for log lines."""
        return key

    def _load(self) -> None:
        """Read every record; skip (with a warning) what cannot be read."""
        self.refresh()

    def refresh(self) -> None:
        """Read the records that changed since the last look (other replicas' locks). Blocks."""
        for key, version in sorted(self.records.versions(self.prefix).items()):
            if self._seen.get(key) == version:
                continue
            self._seen[key] = version
            try:
                stored = self.records.get(key)
                if stored is None:
                    continue
                flake, revision, refs = _entry_from_json(json.loads(stored.value))
                if self.key(flake, revision) != key:
                    raise ValueError("file name does not match its flake and revision")
            except Exception as error:  # a bad record must never stop start-up
                log.warn("skipping unreadable locked-revision file {path}: {error}", path=self.where(key), error=error)
                continue
            for ref in refs:
                self._memory.record(flake, revision, ref)

    def record(self, flake: str, revision: str, ref: str) -> None:
        """Durably add `ref` to the tags of (flake, revision); no write when already known. Blocks."""
        with self._write_lock:
            if ref in self._memory.refs(flake, revision):
                return

            def add(current: Any | None) -> dict[str, Any] | None:
                try:
                    _, _, stored = _entry_from_json(current)
                except ValueError:
                    stored = []
                if ref in stored:
                    return None
                return {"format": _FORMAT, "flake": flake, "revision": revision,
                        "refs": sorted({*stored, *self._memory.refs(flake, revision), ref})}

            update_json(self.records, self.key(flake, revision), add)
            self._memory.record(flake, revision, ref)

    def refs(self, flake: str, revision: str) -> frozenset[str]:
        """Return the tags that locked `flake` to `revision`, from memory."""
        return self._memory.refs(flake, revision)


class FilesystemLockedRevisions(RecordLockedRevisions):
    """Locked revisions in `<root>/revisions/`, one JSON file each (the data-dir layout of earlier versions)."""

    def __init__(self, root: str) -> None:
        self.file_records = FilesystemRecordStore(root)
        self.directory = os.path.join(self.file_records.root, "revisions")
        os.makedirs(self.directory, exist_ok=True)
        self.file_records.remove_temporaries(["revisions"])
        super().__init__(self.file_records)

    def path(self, flake: str, revision: str) -> str:
        """Return the file that holds (flake, revision)."""
        return self.file_records.path(self.key(flake, revision))

    def where(self, key: str) -> str:
        """The file of record `key`."""
        return self.file_records.path(key)
