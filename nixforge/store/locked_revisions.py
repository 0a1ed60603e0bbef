"""The durable record of revisions nixforge locked each flake to, and the tags that locked them."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from nixforge.store.durable import replace_file
from nixforge.store.interfaces import ILockedRevisions

log = Logger()

_FORMAT = 1
_TEMP_PREFIX = ".tmp-"


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
class FilesystemLockedRevisions:
    """One JSON file per (flake, revision): `<root>/revisions/<sha256(flake, revision)>.json`.

    The file holds the flake, the revision and the sorted tags that locked it; it is replaced
    atomically (temp file, fsync, rename) when a new tag locks the same revision. Everything is
    read at construction; `refs` is then answered from memory.
    """

    def __init__(self, root: str) -> None:
        self.directory = os.path.join(os.path.abspath(root), "revisions")
        os.makedirs(self.directory, exist_ok=True)
        self._memory = MemoryLockedRevisions()
        self._write_lock = threading.Lock()
        self._load()

    def path(self, flake: str, revision: str) -> str:
        """Return the file that holds (flake, revision)."""
        return os.path.join(self.directory, _file_stem(flake, revision) + ".json")

    def _load(self) -> None:
        """Read every file; skip (with a warning) what cannot be read, remove stale temp files."""
        with os.scandir(self.directory) as entries:
            paths = sorted(entry.path for entry in entries)
        for path in paths:
            if os.path.basename(path).startswith(_TEMP_PREFIX):
                os.unlink(path)
                continue
            try:
                with open(path, "rb") as file:
                    flake, revision, refs = _entry_from_json(json.load(file))
                if self.path(flake, revision) != path:
                    raise ValueError("file name does not match its flake and revision")
            except Exception as error:  # a bad file must never stop start-up
                log.warn("skipping unreadable locked-revision file {path}: {error}", path=path, error=error)
                continue
            for ref in refs:
                self._memory.record(flake, revision, ref)

    def record(self, flake: str, revision: str, ref: str) -> None:
        """Durably add `ref` to the tags of (flake, revision); no write when already known. Blocks."""
        with self._write_lock:
            known = self._memory.refs(flake, revision)
            if ref in known:
                return
            document = {"format": _FORMAT, "flake": flake, "revision": revision,
                        "refs": sorted(known | {ref})}
            replace_file(self.path(flake, revision),
                         json.dumps(document, sort_keys=True, indent=1).encode("utf-8"), _TEMP_PREFIX)
            self._memory.record(flake, revision, ref)

    def refs(self, flake: str, revision: str) -> frozenset[str]:
        """Return the tags that locked `flake` to `revision`, from memory."""
        return self._memory.refs(flake, revision)
