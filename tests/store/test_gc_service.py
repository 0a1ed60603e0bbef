"""GcScheduler and GcTimerService: one run at a time in the pool, queued requests, timer, clean stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from nixforge.store.gc import GcResult
from nixforge.store.gc_service import GcScheduler, GcTimerService
from nixforge.store.interfaces import IStoreKeeper
from nixforge.store.pull_times import PullTimes

from .test_gc import Fixture


class ManualPool:
    """run_in_thread that queues calls; `step` runs the oldest one and fires its Deferred."""

    def __init__(self) -> None:
        self.calls: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, function: Any, *args: Any) -> Deferred[Any]:
        deferred: Deferred[Any] = Deferred()
        self.calls.append((deferred, function, args))
        return deferred

    def step(self) -> Any:
        deferred, function, args = self.calls.pop(0)
        result = function(*args)
        deferred.callback(result)
        return result


def make(tmp_path: Path, max_size: int | None = None) -> tuple[GcScheduler, ManualPool, Fixture, Clock]:
    fixture = Fixture(tmp_path, max_size=max_size)
    pool, clock = ManualPool(), Clock()
    return GcScheduler(fixture.gc, pool, clock), pool, fixture, clock


def test_requests_during_a_run_queue_exactly_one_more(tmp_path: Path) -> None:
    scheduler, pool, fixture, _ = make(tmp_path)
    assert verifyObject(IStoreKeeper, scheduler)
    first = scheduler.run("timer")
    scheduler.full()
    scheduler.full()
    assert len(pool.calls) == 1
    assert isinstance(pool.step(), GcResult)
    assert first.called and len(pool.calls) == 1  # the queued run, once
    fixture.store.put(b"garbage written since the first run")
    result = pool.step()
    assert result.reason == "store full" and result.blobs_deleted == 1
    assert pool.calls == [] and scheduler.runs == 2


def test_after_a_build_gc_runs_only_with_a_cap_and_only_when_over_it(tmp_path: Path) -> None:
    scheduler, pool, _, _ = make(tmp_path)
    scheduler.stored()
    assert [function.__name__ for _, function, _ in pool.calls] == ["store_usage"]  # no GC without a cap
    pool.step()
    scheduler.collector.max_size = 1 << 20
    scheduler.stored()
    assert pool.step() is None  # under the cap: nothing done
    assert scheduler.runs == 0


def test_store_size_is_noted_after_a_build_and_a_run(tmp_path: Path) -> None:
    scheduler, pool, fixture, _ = make(tmp_path)
    fixture.store.put(b"a blob of 17 bytes")
    scheduler.stored()
    pool.step()
    assert (scheduler.store_bytes, scheduler.store_blobs) == (18, 1)
    scheduler.run()
    result = pool.step()
    assert result.blobs_deleted == 1 and scheduler.bytes_freed == 18  # unreferenced: swept
    assert (scheduler.store_bytes, scheduler.store_blobs) == (0, 0)


def test_pulls_and_leases_reach_the_store(tmp_path: Path) -> None:
    scheduler, _, fixture, clock = make(tmp_path)
    clock.advance(123)
    scheduler.pulled("hello", "latest")
    assert fixture.pulls.get("hello", "latest") == 123
    token = scheduler.begin_build()
    assert fixture.store.leases.active() == 1
    scheduler.end_build(token)
    assert fixture.store.leases.active() == 0


def test_the_timer_runs_at_start_and_every_interval_and_stop_saves_pull_times(tmp_path: Path) -> None:
    scheduler, pool, fixture, clock = make(tmp_path)
    service = GcTimerService(scheduler, 60)
    service.clock = clock
    service.startService()
    assert len(pool.calls) == 1
    pool.step()
    clock.advance(60)
    assert len(pool.calls) == 1
    scheduler.pulled("hello", "latest")
    stopped = service.stopService()
    assert fixture.gc.cancelled.is_set()
    assert len(pool.calls) == 2  # the run in progress, then the pull times' save
    pool.step()
    assert not stopped.called
    pool.step()
    assert stopped.called
    assert PullTimes.in_file(str(tmp_path / "pulls.json")).get("hello", "latest") == 60
