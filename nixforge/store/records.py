"""Record stores kept in memory and in files, and the JSON helpers every durable record uses."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from zope.interface import implementer

from nixforge.store.durable import fsync_directory, replace_file
from nixforge.store.interfaces import IRecordStore, StoredRecord

TEMP_PREFIX = ".tmp-"
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


def check_key(key: str) -> str:
    """Return `key` if it is a well-formed record key, else raise ValueError."""
    if not isinstance(key, str) or _KEY.fullmatch(key) is None or len(key) > 512:
        raise ValueError(f"not a record key: {key!r}")
    return key


def encode_json(document: Any) -> bytes:
    """The bytes of a JSON record: sorted keys, so equal documents are equal bytes."""
    return json.dumps(document, sort_keys=True, indent=1).encode("utf-8")


def update_json(records: IRecordStore, key: str, change: Callable[[Any | None], Any | None]) -> Any | None:
    """Compare-and-swap loop: write `change(current document or None)` until no one raced us.

    `change` returns the new document, or None to leave the record as it is. Returns what was
    written (or None). A record that is not JSON reads as None.
    """
    while True:
        stored = records.get(key)
        current = None
        if stored is not None:
            with contextlib.suppress(ValueError):
                current = json.loads(stored.value)
        document = change(current)
        if document is None:
            return None
        if records.swap(key, encode_json(document), None if stored is None else stored.version) is not None:
            return document


def _version(value: bytes) -> str:
    return '"' + hashlib.sha256(value).hexdigest()[:32] + '"'


@implementer(IRecordStore)
class MemoryRecordStore:
    """Records in a dict; thread-safe, never durable."""

    def __init__(self) -> None:
        self._records: dict[str, StoredRecord] = {}
        self._lock = threading.Lock()
        self._writes = 0

    def _store(self, key: str, value: bytes) -> str:
        self._writes += 1
        version = f'"{self._writes}"'
        self._records[key] = StoredRecord(bytes(value), version)
        return version

    def get(self, key: str) -> StoredRecord | None:
        """Return the record, or None."""
        with self._lock:
            return self._records.get(check_key(key))

    def put(self, key: str, value: bytes) -> str:
        """Write unconditionally."""
        with self._lock:
            return self._store(check_key(key), value)

    def swap(self, key: str, value: bytes, version: str | None) -> str | None:
        """Write if the record is still at `version` (None: absent)."""
        with self._lock:
            current = self._records.get(check_key(key))
            if (None if current is None else current.version) != version:
                return None
            return self._store(key, value)

    def delete(self, key: str, version: str | None = None) -> bool:
        """Remove the record (if at `version`, when given)."""
        with self._lock:
            current = self._records.get(check_key(key))
            if current is None or (version is not None and current.version != version):
                return False
            del self._records[key]
            return True

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        with self._lock:
            return sorted(key for key in self._records if key.startswith(prefix))

    def versions(self, prefix: str) -> dict[str, str]:
        """The version of every record under `prefix`."""
        with self._lock:
            return {key: stored.version for key, stored in self._records.items() if key.startswith(prefix)}


@implementer(IRecordStore)
class FilesystemRecordStore:
    """One file per record under `root` (the key is its relative path), replaced atomically.

    The version is a hash of the bytes. Conditional writes hold a thread lock and an `flock` on
    the root directory, so two processes on one directory never lose an update.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, key: str) -> str:
        """The file of record `key`."""
        return os.path.join(self.root, *check_key(key).split("/"))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _read(self, path: str) -> StoredRecord | None:
        try:
            with open(path, "rb") as file:
                value = file.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return StoredRecord(value, _version(value))

    def _write(self, path: str, value: bytes) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        replace_file(path, value, TEMP_PREFIX)
        return _version(value)

    def get(self, key: str) -> StoredRecord | None:
        """Return the record, or None."""
        return self._read(self.path(key))

    def put(self, key: str, value: bytes) -> str:
        """Write unconditionally (temp file, fsync, rename, fsync of the directory)."""
        return self._write(self.path(key), value)

    def swap(self, key: str, value: bytes, version: str | None) -> str | None:
        """Write if the record is still at `version` (None: absent)."""
        path = self.path(key)
        with self._exclusive():
            current = self._read(path)
            if (None if current is None else current.version) != version:
                return None
            return self._write(path, value)

    def delete(self, key: str, version: str | None = None) -> bool:
        """Remove the record (if at `version`, when given)."""
        path = self.path(key)
        with self._exclusive():
            current = self._read(path)
            if current is None or (version is not None and current.version != version):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            fsync_directory(os.path.dirname(path))
            return True

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted (temporary and hidden files are not records)."""
        directory, _, _ = prefix.rpartition("/")
        start = os.path.join(self.root, *directory.split("/")) if directory else self.root
        found = []
        for base, subdirectories, files in os.walk(start):
            subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
            relative = os.path.relpath(base, self.root)
            for name in files:
                key = name if relative == "." else f"{relative.replace(os.sep, '/')}/{name}"
                if not name.startswith(".") and key.startswith(prefix) and _KEY.fullmatch(key):
                    found.append(key)
        return sorted(found)

    def versions(self, prefix: str) -> dict[str, str]:
        """The version of every record under `prefix` (reads each file: records are small)."""
        found = {}
        for key in self.keys(prefix):
            stored = self.get(key)
            if stored is not None:
                found[key] = stored.version
        return found

    def remove_temporaries(self, directories: Iterable[str] = ("",)) -> int:
        """Delete temp files a crash left in `directories` (at start-up, before any write); return how many."""
        removed = 0
        for directory in directories:
            path = os.path.join(self.root, directory)
            with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed += 1
        return removed
