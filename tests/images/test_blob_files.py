"""stored_size: the store's memory first; a blob it has not seen yet is asked for off the reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from nixforge.images.blob_files import stored_size
from nixforge.store.memory import MemoryBlobStore


class ReplicaStore(MemoryBlobStore):
    """A store that knows on the reactor only what it listed, as the S3 store does; a worker thread asks."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: set[str] = set()
        self.in_thread = False

    def size(self, digest: str) -> int | None:
        if not self.in_thread and digest not in self.listed:
            return None
        return super().size(digest)


def worker(store: ReplicaStore, calls: list[str]) -> Callable[..., Deferred[Any]]:
    def run_in_thread(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        calls.append(args[0])
        store.in_thread = True
        try:
            return succeed(function(*args))
        finally:
            store.in_thread = False
    return run_in_thread


def result(deferred: Deferred[Any]) -> Any:
    found: list[Any] = []
    deferred.addCallback(found.append)
    return found[0]


def test_a_listed_blob_is_answered_from_memory_without_a_thread() -> None:
    store, calls = ReplicaStore(), []
    digest, size = store.put(b"listed")
    store.listed.add(digest)
    assert result(stored_size(store, digest, worker(store, calls))) == size and calls == []


def test_a_blob_another_replica_stored_is_asked_for_in_a_thread() -> None:
    store, calls = ReplicaStore(), []
    digest, size = store.put(b"stored by another replica")
    assert result(stored_size(store, digest, worker(store, calls))) == size and calls == [digest]


def test_an_absent_blob_is_none() -> None:
    store, calls = ReplicaStore(), []
    assert result(stored_size(store, "sha256:" + "0" * 64, worker(store, calls))) is None
