"""The durable (name, tag) → TagRecord index: one JSON file per record, loaded at start-up."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

from attrs import asdict
from twisted.logger import Logger
from zope.interface import implementer

from nixforge.store.durable import replace_file
from nixforge.store.interfaces import ITagIndex, TagRecord

log = Logger()

_FORMAT = 1
_TEMP_PREFIX = ".tmp-"
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "tag": (str,), "oci_digest": (str,), "docker_digest": (str,),
    "built_at": (int, float), "source": (str,), "immutable": (bool,),
}


@implementer(ITagIndex)
class MemoryTagIndex:
    """Records and per-name manifest history in dicts; thread-safe, never durable."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, TagRecord]] = {}
        self._history: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def get(self, name: str, tag: str) -> TagRecord | None:
        """Return the record for (name, tag), or None."""
        with self._lock:
            return self._records.get(name, {}).get(tag)

    def put(self, record: TagRecord) -> None:
        """Replace the record for (record.name, record.tag) and remember its digests."""
        with self._lock:
            self._records.setdefault(record.name, {})[record.tag] = record
            self._history.setdefault(record.name, set()).update(record.digests())

    def remember(self, name: str, digests: set[str] | frozenset[str]) -> None:
        """Add manifest digests of superseded records to `name`'s history."""
        with self._lock:
            self._history.setdefault(name, set()).update(digests)

    def manifest_digests(self, name: str) -> frozenset[str]:
        """Return every manifest digest ever recorded for `name`."""
        with self._lock:
            return frozenset(self._history.get(name, ()))

    def tags(self, name: str) -> list[str]:
        """Return the repository's tags, sorted."""
        with self._lock:
            return sorted(self._records.get(name, {}))

    def names(self) -> list[str]:
        """Return every repository with at least one tag, sorted."""
        with self._lock:
            return sorted(name for name, tags in self._records.items() if tags)

    def has_manifest(self, name: str, digest: str) -> bool:
        """Tell whether `digest` was ever the OCI or Docker manifest of a record of `name`."""
        with self._lock:
            return digest in self._history.get(name, ())


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


@implementer(ITagIndex)
class FilesystemTagIndex:
    """Records as `<root>/index/r-<sha256(name, tag)>.json`, history as `d-<sha256(name)>.json`.

    File names are hashes, so no name or tag can escape the directory; the name and tag live in
    the JSON. Everything is read at construction; reads are then answered from memory. `put` blocks.
    """

    def __init__(self, root: str) -> None:
        self.directory = os.path.join(os.path.abspath(root), "index")
        os.makedirs(self.directory, exist_ok=True)
        self._memory = MemoryTagIndex()
        self._write_lock = threading.Lock()
        self._load()

    def record_path(self, name: str, tag: str) -> str:
        """Return the file holding the record of (name, tag)."""
        return os.path.join(self.directory, f"r-{_key(name, tag)}.json")

    def history_path(self, name: str) -> str:
        """Return the file holding `name`'s manifest digest history."""
        return os.path.join(self.directory, f"d-{_key(name)}.json")

    def _load(self) -> None:
        """Read every record and history file; skip (with a warning) what cannot be read."""
        with os.scandir(self.directory) as entries:
            paths = sorted(entry.path for entry in entries)
        for path in paths:
            base = os.path.basename(path)
            if base.startswith(_TEMP_PREFIX):
                os.unlink(path)
                continue
            try:
                with open(path, "rb") as file:
                    data = json.load(file)
                if base.startswith("r-"):
                    record = _record_from_json(data)
                    if self.record_path(record.name, record.tag) != path:
                        raise ValueError("file name does not match the record's name and tag")
                    self._memory.put(record)
                elif base.startswith("d-"):
                    name, digests = data["name"], data["digests"]
                    if not isinstance(name, str) or self.history_path(name) != path:
                        raise ValueError("file name does not match the history's name")
                    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
                        raise ValueError("digests is not a list of strings")
                    self._memory.remember(name, set(digests))
                else:
                    raise ValueError("unexpected file in the index directory")
            except Exception as error:  # a bad file must never stop start-up
                log.warn("skipping unreadable tag index file {path}: {error}", path=path, error=error)

    def _write_json(self, path: str, data: dict[str, Any]) -> None:
        """Atomically replace `path` with `data`."""
        replace_file(path, json.dumps(data, sort_keys=True, indent=1).encode("utf-8"), _TEMP_PREFIX)

    def put(self, record: TagRecord) -> None:
        """Durably write the history, then the record, then update memory. Blocks."""
        with self._write_lock:
            known = self._memory.manifest_digests(record.name)
            digests = known | record.digests()
            if digests != known:
                self._write_json(
                    self.history_path(record.name),
                    {"format": _FORMAT, "name": record.name, "digests": sorted(digests)},
                )
            self._write_json(
                self.record_path(record.name, record.tag), {"format": _FORMAT, **asdict(record)}
            )
            self._memory.put(record)

    def get(self, name: str, tag: str) -> TagRecord | None:
        """Return the record, from memory."""
        return self._memory.get(name, tag)

    def tags(self, name: str) -> list[str]:
        """Return the repository's tags, sorted."""
        return self._memory.tags(name)

    def names(self) -> list[str]:
        """Return every repository with at least one tag, sorted."""
        return self._memory.names()

    def has_manifest(self, name: str, digest: str) -> bool:
        """Tell whether `digest` was ever a manifest of `name` (superseded records count)."""
        return self._memory.has_manifest(name, digest)
