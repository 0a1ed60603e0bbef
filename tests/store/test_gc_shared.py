"""GC of replicas sharing one store: one collects at a time (a GC lease), marking every replica's records."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

from nixforge.oci.manifest_references import ManifestReferences
from nixforge.store.durable_index import RecordTagIndex
from nixforge.store.gc import GarbageCollector, GcResult
from nixforge.store.gc_journal import GcJournal
from nixforge.store.interfaces import TagRecord
from nixforge.store.layer_cache import LayerCache
from nixforge.store.memory import MemoryBlobStore
from nixforge.store.pull_times import PullTimes
from nixforge.store.record_leases import RecordLeases
from nixforge.store.records import MemoryRecordStore


class Replica:
    """One replica's GC over the shared blob store and record store."""

    def __init__(self, blobs: MemoryBlobStore, records: MemoryRecordStore, name: str) -> None:
        self.index = RecordTagIndex(records)
        self.leases = RecordLeases(records, ttl=300, holder=name)
        self.gc = GarbageCollector(blobs, self.index, LayerCache(records), PullTimes(records), GcJournal(records),
                                   ManifestReferences(), shared=self.leases)


def store_image(blobs: MemoryBlobStore, index: RecordTagIndex, name: str) -> set[str]:
    """Store a config, a layer and a manifest naming them, and tag it; return the three digests."""
    config, _ = blobs.put(json.dumps({"name": name}).encode())
    layer, _ = blobs.put(f"layer of {name}".encode())
    manifest = json.dumps({"config": {"digest": config}, "layers": [{"digest": layer}]}).encode()
    digest, _ = blobs.put(manifest)
    index.put(TagRecord(name, "latest", digest, digest, 1.0, "path:/f"))
    return {config, layer, digest}


def test_gc_marks_the_records_another_replica_wrote_after_it_started() -> None:
    blobs, records = MemoryBlobStore(), MemoryRecordStore()
    a, b = Replica(blobs, records, "a"), Replica(blobs, records, "b")
    kept = store_image(blobs, a.index, "hello")
    garbage, _ = blobs.put(b"nobody references this")
    result = b.gc.collect()
    assert result is not None and result.blobs_deleted == 1
    assert {digest for digest, _ in blobs.digests()} == kept and garbage not in kept
    assert records.keys("leases/") == []  # released


def test_only_the_holder_of_the_gc_lease_collects() -> None:
    blobs, records = MemoryBlobStore(), MemoryRecordStore()
    a, b = Replica(blobs, records, "a"), Replica(blobs, records, "b")
    blobs.put(b"garbage")
    held = a.leases.acquire("gc")
    assert held is not None
    assert b.gc.collect() is None
    assert len(list(blobs.digests())) == 1
    a.leases.release(held)
    assert b.gc.collect() is not None and list(blobs.digests()) == []


class HeldListing(MemoryBlobStore):
    """A blob store whose listing waits for `go`: the lease holder stays mid-run while the other starts."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def digests(self) -> Iterator[tuple[str, int]]:
        assert self.go.wait(30)
        yield from super().digests()


def test_two_replicas_starting_gc_together_collect_once() -> None:
    blobs, records = HeldListing(), MemoryRecordStore()
    a, b = Replica(blobs, records, "a"), Replica(blobs, records, "b")
    kept = store_image(blobs, a.index, "hello")
    blobs.put(b"garbage")
    start = threading.Barrier(2)
    results: list[object] = []
    finished = threading.Condition()

    def collect(replica: Replica) -> None:
        start.wait(10)
        result = replica.gc.collect()
        with finished:
            results.append(result)
            finished.notify_all()
    threads = [threading.Thread(target=collect, args=(replica,)) for replica in (a, b)]
    for thread in threads:
        thread.start()
    with finished:
        assert finished.wait_for(lambda: results, 30)  # the one without the lease is back at once
    assert results == [None]
    blobs.go.set()
    for thread in threads:
        thread.join(30)
    [ran] = [result for result in results if result is not None]
    assert isinstance(ran, GcResult) and ran.blobs_deleted == 1
    assert {digest for digest, _ in blobs.digests()} == kept and records.keys("leases/") == []
