"""SharedBuilds: one replica holds the build lease, the others wait for its record or take over after expiry."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock

from nixforge.images.shared_builds import HeldLease, SharedBuilds
from nixforge.store.durable_index import RecordTagIndex
from nixforge.store.interfaces import TagRecord
from nixforge.store.record_leases import RecordLeases
from nixforge.store.records import MemoryRecordStore

RECORD = TagRecord("hello", "latest", "sha256:" + "a" * 64, "sha256:" + "a" * 64, 5.0, "path:/f?narHash=x")


def in_caller(function: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(function, *args)


def replica(records: MemoryRecordStore, clock: Clock, name: str) -> tuple[SharedBuilds, RecordTagIndex]:
    index = RecordTagIndex(records, clock=clock.seconds)
    leases = RecordLeases(records, ttl=30, monotonic=clock.seconds, holder=name)
    return SharedBuilds(leases, index.reload, in_caller, clock, poll=1.0), index


def test_the_second_replica_waits_for_the_first_ones_record() -> None:
    records, clock = MemoryRecordStore(), Clock()
    (first, first_index), (second, _) = replica(records, clock, "a"), replica(records, clock, "b")
    held = ensureDeferred(first.hold_or_wait("hello", "latest", RECORD.source))
    lease = held.result
    assert isinstance(lease, HeldLease)
    waiting = ensureDeferred(second.hold_or_wait("hello", "latest", RECORD.source))
    for _ in range(50):  # the build runs for 50 s: renewed, so never taken over
        clock.advance(1)
    assert not waiting.called
    first_index.put(RECORD)
    lease.release()
    clock.advance(1)
    assert waiting.result == RECORD
    assert records.keys("leases/") == []


def test_a_dead_holders_build_is_taken_over_once_its_lease_expires() -> None:
    records, clock = MemoryRecordStore(), Clock()
    dead = RecordLeases(records, ttl=30, holder="dead")
    assert dead.acquire(_lease_name()) is not None  # then the holder dies: no renewal, no record
    (waiter, _) = replica(records, clock, "b")
    waiting = ensureDeferred(waiter.hold_or_wait("hello", "latest", RECORD.source))
    clock.advance(29)
    assert not waiting.called
    clock.advance(3)
    assert isinstance(waiting.result, HeldLease)
    waiting.result.release()


def test_a_record_from_another_source_does_not_end_the_wait() -> None:
    records, clock = MemoryRecordStore(), Clock()
    (first, first_index), (second, _) = replica(records, clock, "a"), replica(records, clock, "b")
    lease = ensureDeferred(first.hold_or_wait("hello", "latest", RECORD.source)).result
    first_index.put(TagRecord("hello", "latest", RECORD.oci_digest, RECORD.docker_digest, 1.0, "path:/f?narHash=old"))
    waiting = ensureDeferred(second.hold_or_wait("hello", "latest", RECORD.source))
    clock.advance(5)
    assert not waiting.called
    lease.release()
    clock.advance(1)
    assert isinstance(waiting.result, HeldLease)  # the holder failed: this replica builds
    waiting.result.release()


def _lease_name() -> str:
    import hashlib

    return "build-" + hashlib.sha256(f"hello\0latest\0{RECORD.source}".encode()).hexdigest()
