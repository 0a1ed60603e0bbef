"""The GC journal: what a GC run is about to delete, written durably before it deletes anything."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from attrs import asdict, frozen

from nixforge.store.durable import fsync_directory, replace_file
from nixforge.store.interfaces import TagRecord

_FORMAT = 1


@frozen
class GcPlan:
    """The tag records to evict and the blobs to delete (each only if still unreferenced)."""

    evict: tuple[TagRecord, ...]
    delete: tuple[str, ...]


class GcJournal:
    """One JSON file, `<root>/gc-journal.json`: present only while a run deletes (or after a crash)."""

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, "gc-journal.json")

    def write(self, plan: GcPlan) -> None:
        """Record the plan durably (temp file, fsync, rename, fsync of the directory)."""
        body = {"format": _FORMAT, "evict": [asdict(r) for r in plan.evict], "delete": list(plan.delete)}
        replace_file(self.path, json.dumps(body).encode("utf-8"), ".tmp-gc-")

    def read(self) -> GcPlan | None:
        """The plan of a run that did not finish, or None. An unreadable journal reads as None."""
        try:
            with open(self.path, "rb") as file:
                data: Any = json.load(file)
            return GcPlan(tuple(TagRecord(**r) for r in data["evict"]), tuple(str(d) for d in data["delete"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return GcPlan((), ())  # half a journal can't exist (rename is atomic); be safe anyway

    def clear(self) -> None:
        """Remove the journal: the run is complete."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
            fsync_directory(os.path.dirname(self.path))
