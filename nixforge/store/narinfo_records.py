"""The binary cache's durable records: per store path hash, the facts of its stored NAR (one record each)."""

from __future__ import annotations

import json
import re
import threading

from attrs import asdict, frozen
from zope.interface import Interface, implementer

from nixforge.store.interfaces import IRecordStore
from nixforge.store.records import FilesystemRecordStore

_HASH_PART = re.compile(r"[0-9a-df-np-sv-z]{32}")


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

    They live in the registry's record store (the data dir, or the bucket replicas share), so any
    replica answers for a NAR any replica made: a miss in memory looks there (`lookup`).
    """

    def get(hash_part: str) -> NarRecord | None:
        """The record of a store path hash."""

    def items() -> list[tuple[str, NarRecord]]:
        """Every (store path hash, record): a snapshot, safe from any thread."""

    def hash_of_file(file_digest: str) -> str | None:
        """The store path hash whose NAR is the blob `file_digest`."""

    def lookup(hash_part: str) -> NarRecord | None:
        """Read the record from the store now (another replica may have written it). Blocks."""

    def put(hash_part: str, record: NarRecord) -> None:
        """Durably write the record, then remember it. Blocks: run it in a worker thread."""


@implementer(INarRecords)
class NarRecords:
    """`nix-cache/<hash>.json` records in the registry's record store (the data dir or the bucket).

    All are read at start-up, so `get` answers from memory; `lookup` reads one that another replica
    wrote since (blocking: in a worker thread).
    """

    def __init__(self, records: IRecordStore, prefix: str = "nix-cache/") -> None:
        self._store = records
        self._prefix = prefix
        self._lock = threading.Lock()
        self._records: dict[str, NarRecord] = {}
        self._by_file: dict[str, str] = {}
        for key in records.keys(prefix):
            hash_part = key[len(prefix):].removesuffix(".json")
            if _HASH_PART.fullmatch(hash_part):
                self.lookup(hash_part)

    @classmethod
    def in_directory(cls, data_dir: str) -> NarRecords:
        """The records of a data dir (`<data dir>/nix-cache/<hash>.json`)."""
        return cls(FilesystemRecordStore(data_dir))

    def _key(self, hash_part: str) -> str:
        if not _HASH_PART.fullmatch(hash_part):
            raise ValueError(f"not a store path hash: {hash_part!r}")
        return f"{self._prefix}{hash_part}.json"

    def _remember(self, hash_part: str, record: NarRecord) -> None:
        with self._lock:
            self._records[hash_part] = record
            self._by_file[record.file_digest] = hash_part

    def get(self, hash_part: str) -> NarRecord | None:
        """The record of a store path hash, from memory."""
        return self._records.get(hash_part)

    def lookup(self, hash_part: str) -> NarRecord | None:
        """The record as the store holds it now (another replica may have written it), remembered. Blocks."""
        stored = self._store.get(self._key(hash_part))
        if stored is None:
            return None
        try:
            data = json.loads(stored.value)
            record = NarRecord(**{**data, "references": tuple(data["references"])})
        except (ValueError, TypeError, KeyError):
            return None  # unreadable: the NAR is made again when asked for
        self._remember(hash_part, record)
        return record

    def items(self) -> list[tuple[str, NarRecord]]:
        """Every (store path hash, record), a snapshot (any thread)."""
        with self._lock:
            return list(self._records.items())

    def hash_of_file(self, file_digest: str) -> str | None:
        """The store path hash whose NAR is the blob `file_digest`, from memory."""
        return self._by_file.get(file_digest)

    def put(self, hash_part: str, record: NarRecord) -> None:
        """Durably write the record, then remember it. Blocks."""
        self._store.put(self._key(hash_part), json.dumps(asdict(record), sort_keys=True).encode())
        self._remember(hash_part, record)
