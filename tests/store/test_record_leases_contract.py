"""RecordLeases on memory, files and a real S3: one holder at a time, renewal, takeover after expiry."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nixforge.store import record_leases
from nixforge.store.interfaces import IRecordStore
from nixforge.store.record_leases import RecordLeases
from nixforge.store.records import FilesystemRecordStore, MemoryRecordStore
from nixforge.store.s3_client import S3Calls, S3Location
from nixforge.store.s3_records import S3RecordStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseContract:
    """Two replicas' lease makers on one record store; subclasses provide `records`."""

    def test_one_holder_at_a_time_and_release_frees_it(self, records: IRecordStore) -> None:
        a, b = RecordLeases(records, ttl=30, holder="a"), RecordLeases(records, ttl=30, holder="b")
        held = a.acquire("build-x")
        assert held is not None and b.acquire("build-x") is None and a.acquire("build-x") is None
        assert b.holder_of("build-x") == "a"
        assert b.acquire("build-y") is not None  # another name is another lease
        assert a.release(held)
        assert b.acquire("build-x") is not None

    def test_a_lease_kept_alive_is_never_taken_over(self, records: IRecordStore) -> None:
        clock = Clock()
        a, b = RecordLeases(records, ttl=30, holder="a"), RecordLeases(records, ttl=30, monotonic=clock, holder="b")
        held = a.acquire("gc")
        assert held is not None
        for _ in range(5):
            assert b.acquire("gc") is None
            clock.now += 20  # never 30 s without a change
            held = a.renew(held)
            assert held is not None
        assert b.acquire("gc") is None and b.takeovers == 0

    def test_a_dead_holders_lease_expires_on_the_waiters_clock_and_one_waiter_takes_it(
            self, records: IRecordStore) -> None:
        clock = Clock()
        dead = RecordLeases(records, ttl=30, holder="dead")
        b = RecordLeases(records, ttl=30, monotonic=clock, holder="b")
        c = RecordLeases(records, ttl=30, monotonic=clock, holder="c")
        lost = dead.acquire("build-x")
        assert lost is not None
        assert b.acquire("build-x") is None and c.acquire("build-x") is None  # first sight: the clock starts
        clock.now += 29
        assert b.acquire("build-x") is None
        clock.now += 2
        taken = b.acquire("build-x")
        assert taken is not None and b.takeovers == 1
        assert c.acquire("build-x") is None  # b's takeover is a new version: c's clock starts again
        assert dead.renew(lost) is None and not dead.release(lost)  # the dead holder lost it
        assert c.holder_of("build-x") == "b"


    def test_replicas_racing_for_a_free_lease_at_once_get_one_holder(self, records: IRecordStore) -> None:
        replicas = [RecordLeases(records, ttl=30, holder=f"r{n}") for n in range(8)]
        start = threading.Barrier(len(replicas))
        won: list[str] = []

        def race(leases: RecordLeases) -> None:
            start.wait(10)
            if leases.acquire("gc") is not None:
                won.append(leases.holder)
        threads = [threading.Thread(target=race, args=(leases,)) for leases in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(won) == 1 and replicas[0].holder_of("gc") == won[0]


def test_a_waiter_remembers_a_bounded_number_of_sightings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_leases, "OBSERVED_KEPT", 3)
    records = MemoryRecordStore()
    holder, waiter = RecordLeases(records, ttl=30, holder="a"), RecordLeases(records, ttl=30, holder="b")
    held = [holder.acquire(f"build-{n}") for n in range(5)]
    assert all(lease is not None for lease in held)
    for n in range(5):
        assert waiter.acquire(f"build-{n}") is None  # each sighting starts a clock
    assert len(waiter._observed) == 3
    holder.release(held[4])  # type: ignore[arg-type]
    assert waiter.acquire("build-4") is not None and len(waiter._observed) == 2  # a lease taken: forgotten


class TestMemoryLeases(LeaseContract):
    @pytest.fixture
    def records(self) -> IRecordStore:
        return MemoryRecordStore()


class TestFilesystemLeases(LeaseContract):
    @pytest.fixture
    def records(self, tmp_path: Path) -> IRecordStore:
        return FilesystemRecordStore(str(tmp_path))


class TestS3Leases(LeaseContract):
    @pytest.fixture
    def records(self, s3_calls: S3Calls, s3_location: S3Location) -> IRecordStore:
        return S3RecordStore(s3_calls, s3_location)
