"""The binary cache's durable records: per store path hash, the facts of its stored NAR (one small file each)."""

from __future__ import annotations

import json
import os
import re
import threading

from attrs import asdict, frozen
from zope.interface import Interface, implementer

from nixforge.store.durable import replace_file

_HASH_PART = re.compile(r"[0-9a-df-np-sv-z]{32}")
_TEMP_PREFIX = ".tmp-narinfo-"


@frozen
class NarRecord:
    """What a narinfo needs beyond the path's references: the NAR's blob and the NAR's own hash."""

    store_path: str
    file_digest: str  # sha256:<hex> of the compressed NAR in the blob store
    file_size: int
    nar_hash_hex: str
    nar_size: int
    references: tuple[str, ...]
    deriver: str | None = None


class INarRecords(Interface):
    """Per store path hash, the record of its stored NAR; `get`, `items` and `hash_of_file` answer from memory.

    Another backend (issue 13's bucket) keeps them beside the NAR blobs, so that any replica
    answers for a NAR any replica made: a miss in memory may then look in the bucket.
    """

    def get(hash_part: str) -> NarRecord | None:
        """The record of a store path hash."""

    def items() -> list[tuple[str, NarRecord]]:
        """Every (store path hash, record): a snapshot, safe from any thread."""

    def hash_of_file(file_digest: str) -> str | None:
        """The store path hash whose NAR is the blob `file_digest`."""

    def put(hash_part: str, record: NarRecord) -> None:
        """Durably write the record, then remember it. Blocks: run it in a worker thread."""


@implementer(INarRecords)
class FilesystemNarRecords:
    """`<data dir>/nix-cache/<hash>.json`, all read at start-up; `get` answers from memory."""

    def __init__(self, data_dir: str) -> None:
        self.directory = os.path.join(data_dir, "nix-cache")
        os.makedirs(self.directory, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, NarRecord] = {}
        self._by_file: dict[str, str] = {}
        for entry in os.listdir(self.directory):
            hash_part = entry.removesuffix(".json")
            if not entry.endswith(".json") or not _HASH_PART.fullmatch(hash_part):
                continue
            try:
                with open(os.path.join(self.directory, entry), encoding="utf-8") as file:
                    data = json.load(file)
                record = NarRecord(**{**data, "references": tuple(data["references"])})
            except (OSError, ValueError, TypeError, KeyError):
                continue  # unreadable: the NAR is made again when asked for
            self._remember(hash_part, record)

    def _remember(self, hash_part: str, record: NarRecord) -> None:
        with self._lock:
            self._records[hash_part] = record
            self._by_file[record.file_digest] = hash_part

    def get(self, hash_part: str) -> NarRecord | None:
        """The record of a store path hash, from memory."""
        return self._records.get(hash_part)

    def items(self) -> list[tuple[str, NarRecord]]:
        """Every (store path hash, record), a snapshot (any thread)."""
        with self._lock:
            return list(self._records.items())

    def hash_of_file(self, file_digest: str) -> str | None:
        """The store path hash whose NAR is the blob `file_digest`, from memory."""
        return self._by_file.get(file_digest)

    def put(self, hash_part: str, record: NarRecord) -> None:
        """Durably write the record (temp file, fsync, rename), then remember it. Blocks."""
        if not _HASH_PART.fullmatch(hash_part):
            raise ValueError(f"not a store path hash: {hash_part!r}")
        body = json.dumps(asdict(record), sort_keys=True)
        replace_file(os.path.join(self.directory, hash_part + ".json"), body.encode(), _TEMP_PREFIX)
        self._remember(hash_part, record)
