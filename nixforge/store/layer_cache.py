"""A durable map from a layer's set of store paths to the stored blob that holds it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator

from attrs import frozen
from twisted.logger import Logger

from nixforge.store.interfaces import IBlobStore, IRecordStore
from nixforge.store.records import FilesystemRecordStore, encode_json

log = Logger()

FORMAT_VERSION = "nixforge-closure-layer-v1"
"""Bump when the tar or gzip bytes of a layer change, so old entries are no longer used."""


@frozen
class LayerBlob:
    """A stored gzip-compressed layer: its blob digest and size, and its uncompressed diff_id."""

    digest: str
    size: int
    diff_id: str


def layer_key(paths: Iterable[str], version: str = FORMAT_VERSION) -> str:
    """Return the cache key of a layer: sha256 hex of the format version and the sorted paths."""
    text = "\n".join([version, *sorted(set(paths))])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _check(key: str) -> str:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"not a layer key: {key!r}")
    return key


class LayerCache:
    """Layer key -> LayerBlob, one record per key (`<prefix><key>.json`), kept in memory too.

    Thread-safe. `get` answers only when the blob is still in the store, so a layer that was
    stored once is never written again, and one whose blob was lost is rebuilt.
    """

    def __init__(self, records: IRecordStore, prefix: str = "layers/") -> None:
        self.records = records
        self.prefix = prefix
        self._memory: dict[str, LayerBlob] = {}
        self._lock = threading.Lock()
        self._writing: dict[str, tuple[threading.Lock, int]] = {}

    @classmethod
    def in_directory(cls, root: str) -> LayerCache:
        """A cache of one JSON file per key in directory `root` (temp files a crash left are removed)."""
        records = FilesystemRecordStore(root)
        records.remove_temporaries()
        return cls(records, prefix="")

    def _key(self, key: str) -> str:
        return f"{self.prefix}{_check(key)}.json"

    def _load(self, record_key: str) -> LayerBlob | None:
        try:
            stored = self.records.get(record_key)
            if stored is None:
                return None
            data = json.loads(stored.value)
            return LayerBlob(str(data["digest"]), int(data["size"]), str(data["diff_id"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warn("ignoring unreadable layer cache entry {key}: {error}", key=record_key, error=str(error))
            return None

    def get(self, key: str, store: IBlobStore) -> LayerBlob | None:
        """Return the cached layer if its blob is in `store`, else None."""
        with self._lock:
            blob = self._memory.get(key)
        if blob is None:
            blob = self._load(self._key(key))
            if blob is not None:
                with self._lock:
                    self._memory[key] = blob
        if blob is None or store.size(blob.digest) is None:
            return None
        return blob

    @contextlib.contextmanager
    def exclusive(self, key: str) -> Iterator[None]:
        """Hold the lock of one layer key, so two images assembled at once write a layer once."""
        with self._lock:
            lock, users = self._writing.get(key, (threading.Lock(), 0))
            self._writing[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._writing[key]
                if users == 1:
                    del self._writing[key]
                else:
                    self._writing[key] = (lock, users - 1)

    def forget_blobs(self, digests: set[str]) -> int:
        """Drop every entry whose blob is in `digests` (GC deleted them); return how many went."""
        if not digests:
            return 0
        removed = 0
        for record_key in self.records.keys(self.prefix):
            if not record_key.endswith(".json"):
                continue
            blob = self._load(record_key)
            if blob is not None and blob.digest in digests:
                self.records.delete(record_key)
                with self._lock:
                    self._memory.pop(record_key[len(self.prefix):-len(".json")], None)
                removed += 1
        return removed

    def put(self, key: str, blob: LayerBlob) -> None:
        """Record `blob` for `key` durably."""
        self.records.put(self._key(key), encode_json({"digest": blob.digest, "size": blob.size,
                                                       "diff_id": blob.diff_id}))
        with self._lock:
            self._memory[key] = blob
