"""The GC journal: what a GC run is about to delete, written durably before it deletes anything."""

from __future__ import annotations

import json
from typing import Any

from attrs import asdict, frozen

from nixforge.store.interfaces import IRecordStore, TagRecord
from nixforge.store.records import encode_json


@frozen
class GcPlan:
    """The tag records to evict and the blobs to delete (each only if still unreferenced)."""

    evict: tuple[TagRecord, ...]
    delete: tuple[str, ...]


class GcJournal:
    """One record (`gc-journal.json`): present only while a run deletes (or after a crash)."""

    def __init__(self, records: IRecordStore, key: str = "gc-journal.json") -> None:
        self.records = records
        self.key = key

    def write(self, plan: GcPlan) -> None:
        """Record the plan durably."""
        body = {"format": 1, "evict": [asdict(r) for r in plan.evict], "delete": list(plan.delete)}
        self.records.put(self.key, encode_json(body))

    def read(self) -> GcPlan | None:
        """The plan of a run that did not finish, or None. An unreadable journal reads as an empty plan."""
        stored = self.records.get(self.key)
        if stored is None:
            return None
        try:
            data: Any = json.loads(stored.value)
            return GcPlan(tuple(TagRecord(**r) for r in data["evict"]), tuple(str(d) for d in data["delete"]))
        except (ValueError, KeyError, TypeError):
            return GcPlan((), ())  # half a journal can't exist (writes are atomic); be safe anyway

    def clear(self) -> None:
        """Remove the journal: the run is complete."""
        self.records.delete(self.key)
