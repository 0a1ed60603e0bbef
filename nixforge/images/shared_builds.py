"""One build across replicas: a build lease per (tag, locked flake); the others wait for its record."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from nixforge.store.interfaces import TagRecord
from nixforge.store.record_leases import Lease, RecordLeases

log = Logger()


@define(eq=False)
class HeldLease:
    """A build lease this replica holds, renewed every third of its lifetime until `release`."""

    leases: RecordLeases
    lease: Lease | None
    run_in_thread: Callable[..., Deferred[Any]]
    _renewing: LoopingCall = field(init=False)

    def start(self, clock: IReactorTime) -> HeldLease:
        """Start renewing."""
        self._renewing = LoopingCall(self._renew)
        self._renewing.clock = clock
        self._renewing.start(self.leases.ttl / 3, now=False).addErrback(
            lambda failure: log.warn("build lease renewal stopped: {error}", error=failure.getErrorMessage()))
        return self

    def _renew(self) -> Deferred[None] | None:
        if self.lease is None:
            return None

        def renewed(lease: Lease | None) -> None:
            if lease is None and self.lease is not None:
                log.warn("lost the build lease {key}: another replica took it over", key=self.lease.key)
            self.lease = lease

        return self.run_in_thread(self.leases.renew, self.lease).addCallback(renewed)

    def release(self) -> None:
        """Stop renewing and delete the lease (in the background)."""
        if self._renewing.running:
            self._renewing.stop()
        lease, self.lease = self.lease, None
        if lease is not None:
            self.run_in_thread(self.leases.release, lease).addErrback(
                lambda failure: log.warn("cannot release a build lease: {error}", error=failure.getErrorMessage()))


@define(eq=False)
class SharedBuilds:
    """Before a build: take its lease, or wait (polling the store) for the record its holder writes."""

    leases: RecordLeases
    reload: Callable[[str, str], TagRecord | None]
    run_in_thread: Callable[..., Deferred[Any]]
    clock: IReactorTime
    poll: float = 0.5
    """Seconds between a waiter's looks at the record (one GET) and the lease; it serves at most this late."""

    async def hold_or_wait(self, name: str, tag: str, source: str,
                           unusable: TagRecord | None = None) -> HeldLease | TagRecord:
        """Return the held lease (build now), or the record another replica built from `source`.

        `unusable` is a record the caller already found incomplete: it never ends the wait.
        """
        lease_name = "build-" + hashlib.sha256(f"{name}\0{tag}\0{source}".encode()).hexdigest()
        waited = False
        while True:
            lease = await self.run_in_thread(self.leases.acquire, lease_name)
            # Checked after acquiring too: the holder writes its record, then releases its lease.
            record = await self.run_in_thread(self.reload, name, tag)
            if record is not None and record.source == source and record != unusable:
                if lease is not None:
                    await self.run_in_thread(self.leases.release, lease)
                log.info("{name}:{tag} was built by another replica", name=name, tag=tag)
                return record
            if lease is not None:
                if waited:
                    log.info("took the build lease of {name}:{tag}", name=name, tag=tag)
                return HeldLease(self.leases, lease, self.run_in_thread).start(self.clock)
            if not waited:
                log.info("another replica is building {name}:{tag}; waiting for its record", name=name, tag=tag)
                waited = True
            await deferLater(self.clock, self.poll, lambda: None)
