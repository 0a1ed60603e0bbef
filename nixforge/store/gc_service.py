"""Run GC from the reactor: one run at a time in the thread pool, on a timer and when asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nixforge.store.gc import GarbageCollector, GcResult
from nixforge.store.interfaces import IStoreKeeper

log = Logger()


@implementer(IStoreKeeper)
@define(eq=False)
class GcScheduler:
    """Single-flight GC runs; a request during a run queues exactly one more run after it."""

    collector: GarbageCollector
    run_in_thread: Callable[..., Deferred[Any]]
    clock: IReactorTime
    runs: int = 0
    results: list[GcResult] = field(factory=list)
    bytes_freed: int = 0
    # The store's size and blob count as of the last GC run or build (for metrics; never a scan per scrape).
    store_bytes: int = 0
    store_blobs: int = 0
    _running: Deferred[GcResult | None] | None = field(default=None, init=False)
    _again: tuple[str, bool] | None = field(default=None, init=False)

    def run(self, reason: str = "timer", only_over_cap: bool = False) -> Deferred[GcResult | None]:
        """Start a run (or queue one after the current run); the Deferred fires when it has run."""
        if self._running is not None:
            if self._again is None or not only_over_cap:
                self._again = (reason, only_over_cap)
            done: Deferred[GcResult | None] = Deferred()
            self._running.addBoth(lambda result: (done.callback(None), result)[1])
            return done
        running = self.run_in_thread(self.collector.collect, reason, only_over_cap)
        self._running = running
        running.addCallbacks(self._finished, self._failed)
        return running

    def _finished(self, result: GcResult | None) -> GcResult | None:
        self._running = None
        if result is not None:
            self.runs += 1
            self.results[:] = [*self.results[-9:], result]
            self.bytes_freed += result.bytes_freed
            self.store_bytes, self.store_blobs = result.store_bytes, result.store_blobs
        self._next()
        return result

    def _failed(self, reason: Failure) -> None:
        self._running = None
        log.failure("gc run failed", reason)
        self._next()

    def _next(self) -> None:
        if self._again is not None and not self.collector.cancelled.is_set():
            reason, only_over_cap = self._again
            self._again = None
            self.run(reason, only_over_cap)

    def idle(self) -> Deferred[None]:
        """Fire when no run is in progress."""
        if self._running is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._running.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    # IStoreKeeper, called by the images service on the reactor thread.

    def pulled(self, name: str, tag: str) -> None:
        """Remember the pull time in memory."""
        self.collector.pulls.record(name, tag, self.clock.seconds())

    def begin_build(self) -> int:
        """Open a lease on blobs the build touches."""
        return self.collector.store.leases.begin()

    def end_build(self, token: int) -> None:
        """Close the build's lease."""
        self.collector.store.leases.end(token)

    def stored(self) -> None:
        """Collect if over the cap (checked in the thread pool); note the store's new size."""
        if self.collector.max_size is not None:
            self.run("after build", only_over_cap=True)
        measured = self.run_in_thread(self.collector.store_usage)
        measured.addCallbacks(self._measured, lambda reason: log.failure("measuring the store failed", reason))

    def _measured(self, usage: tuple[int, int]) -> None:
        self.store_bytes, self.store_blobs = usage

    def full(self) -> None:
        """The disk is full: collect now."""
        self.run("store full")


class GcTimerService(TimerService):
    """Run GC every `interval` seconds, first at start-up (finishing a crashed run's journal)."""

    def __init__(self, scheduler: GcScheduler, interval: float) -> None:
        super().__init__(interval, self._tick)
        self.scheduler = scheduler
        self.clock = scheduler.clock  # TimerService would use the global reactor otherwise

    def _tick(self) -> Deferred[Any]:
        return self.scheduler.run("timer").addErrback(lambda _: None)

    def startService(self) -> None:
        self.scheduler.collector.cancelled.clear()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        """Interrupt a run between deletions, save the pull times (queued before the pool stops)."""
        self.scheduler.collector.cancelled.set()
        saved = self.scheduler.run_in_thread(self.scheduler.collector.pulls.save)
        saved.addErrback(lambda reason: log.failure("saving pull times failed", reason))
        stopped = super().stopService()
        return gatherResults([saved, stopped if isinstance(stopped, Deferred) else succeed(None)])
