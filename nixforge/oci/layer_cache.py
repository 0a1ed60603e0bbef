"""A durable map from a layer's set of store paths to the stored blob that holds it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator

from twisted.logger import Logger

from nixforge.oci.documents import LayerBlob
from nixforge.store.durable import replace_file
from nixforge.store.interfaces import IBlobStore

log = Logger()
_TEMP_PREFIX = ".tmp-"

FORMAT_VERSION = "nixforge-closure-layer-v1"
"""Bump when the tar or gzip bytes of a layer change, so old entries are no longer used."""


def layer_key(paths: Iterable[str], version: str = FORMAT_VERSION) -> str:
    """Return the cache key of a layer: sha256 hex of the format version and the sorted paths."""
    text = "\n".join([version, *sorted(set(paths))])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class LayerCache:
    """Layer key -> LayerBlob, one JSON file per key under `root`, kept in memory too.

    Thread-safe. `get` answers only when the blob is still in the store, so a layer that was
    stored once is never written again, and one whose blob was lost is rebuilt.
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._memory: dict[str, LayerBlob] = {}
        self._lock = threading.Lock()
        self._writing: dict[str, tuple[threading.Lock, int]] = {}
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            if name.startswith(_TEMP_PREFIX):  # left by a crash in the middle of `put`
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))

    def _file(self, key: str) -> str:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a layer key: {key!r}")
        return os.path.join(self._root, key + ".json")

    def _load(self, key: str) -> LayerBlob | None:
        try:
            with open(self._file(key), "rb") as file:
                data = json.loads(file.read())
            return LayerBlob(str(data["digest"]), int(data["size"]), str(data["diff_id"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warn("ignoring unreadable layer cache entry {key}: {error}", key=key, error=str(error))
            return None

    def get(self, key: str, store: IBlobStore) -> LayerBlob | None:
        """Return the cached layer if its blob is in `store`, else None."""
        with self._lock:
            blob = self._memory.get(key)
        if blob is None:
            blob = self._load(key)
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
        for name in os.listdir(self._root):
            key = name.removesuffix(".json")
            if name.startswith(_TEMP_PREFIX) or key == name:
                continue
            try:
                blob = self._load(key)
            except ValueError:
                continue
            if blob is not None and blob.digest in digests:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._file(key))
                with self._lock:
                    self._memory.pop(key, None)
                removed += 1
        return removed

    def put(self, key: str, blob: LayerBlob) -> None:
        """Record `blob` for `key` durably (temp file, fsync, rename, fsync of the directory)."""
        body = json.dumps({"digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id}, sort_keys=True)
        replace_file(self._file(key), body.encode(), _TEMP_PREFIX)
        with self._lock:
            self._memory[key] = blob
