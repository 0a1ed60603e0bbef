"""FlakeLocks: each flake reference locked once per refresh interval, shared by every name's plan.

A pull of any name needs the revision its tag is at. Nix finds that out with `nix flake metadata`,
which for a `github:` flake costs a call to GitHub's API. The answer is kept per flake reference:
a moving tag (`latest`, a branch, a git tag) is locked again, with `--refresh`, only after the
refresh interval or once `expire` was called (the webhook); a commit tag is locked once. So a
thousand made-up names cost one lock, not a thousand.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nixforge.errors import ForgeError
from nixforge.images.nix_errors import mapped
from nixforge.images.single_flight import SingleFlight
from nixforge.images.targets import flake_ref_for, is_immutable

log = Logger()
FAILED_LOCK_TTL = 30.0
"""Seconds a flake reference that failed to lock is answered with that failure, without Nix."""
LockListener = Callable[[str, "FlakeLock"], Awaitable[None] | None]


@frozen
class FlakeLock:
    """What `nix flake metadata` said of a flake reference, and when."""

    flake_ref: str
    locked: str
    revision: str | None
    metadata: dict[str, Any] = field(eq=False, repr=False)
    at: float = field(eq=False)
    generation: int = field(eq=False, default=0)

    @property
    def last_modified(self) -> int | None:
        """The revision's commit time (seconds since the epoch), when Nix gives one."""
        value = self.metadata.get("lastModified")
        return value if isinstance(value, int) else None


def locked_revision(metadata: dict[str, Any]) -> str | None:
    """The git revision `nix flake metadata` locked the flake to (`revision` or `locked.rev`), if any."""
    locked = metadata.get("locked")
    revision = metadata.get("revision") or (locked.get("rev") if isinstance(locked, dict) else None)
    return revision if isinstance(revision, str) else None


@define(eq=False)
class FlakeLocks:
    """Lock `flake` at a tag through `nix` (anything with `metadata(ref, timeout=, refresh=)`), cached.

    `listeners` are told (and awaited) about every new lock, in order: the policy records the
    revision, prebuilds start when it moved.
    """

    nix: Any
    clock: IReactorTime
    flake: str
    refresh_interval: float
    timeout: float
    capacity: int = 256
    listeners: list[LockListener] = field(factory=list)
    locks_run: int = field(default=0, init=False)
    _locks: OrderedDict[str, FlakeLock] = field(factory=OrderedDict, init=False)
    _generation: int = field(default=0, init=False)
    _flights: SingleFlight = field(factory=SingleFlight, init=False)
    # flake ref → (the error its last lock failed with, until when it is answered again)
    _failed: OrderedDict[str, tuple[ForgeError, float]] = field(factory=OrderedDict, init=False)

    def known(self, tag: str) -> FlakeLock | None:
        """The last lock of `tag`, fresh or not (None if it was never locked)."""
        try:
            return self._locks.get(flake_ref_for(self.flake, tag))
        except Exception:
            return None

    async def lock(self, tag: str) -> FlakeLock:
        """The lock of the flake at `tag`: kept, or fetched now (one `nix flake metadata` at a time per ref).

        Raises the registry's errors: an unknown tag is ManifestUnknown, an unreachable flake BuildFailed.
        """
        flake_ref = flake_ref_for(self.flake, tag)
        lock = self._locks.get(flake_ref)
        if lock is not None and self._fresh(lock, tag):
            self._locks.move_to_end(flake_ref)
            return lock
        failed = self._failed.get(flake_ref)
        if failed is not None and self.clock.seconds() < failed[1]:
            raise failed[0].fresh()
        # A fetch started before the last `expire` may predate the push it announced: don't join it.
        return await self._flights.run((flake_ref, self._generation),
                                       lambda: ensureDeferred(self._fetch(flake_ref, tag)))

    def expire(self) -> None:
        """Lock every moving tag again on its next use (the refresh webhook); forget failed locks."""
        self._generation += 1
        self._failed.clear()

    def _fresh(self, lock: FlakeLock, tag: str) -> bool:
        if is_immutable(tag):
            return True
        return lock.generation == self._generation and self.clock.seconds() - lock.at < self.refresh_interval

    async def _fetch(self, flake_ref: str, tag: str) -> FlakeLock:
        refresh = not is_immutable(tag)  # at most once per interval: fetch what moved since, whatever tarball-ttl says
        generation = self._generation
        self.locks_run += 1
        log.info("locking {flake} ({tag})", flake=flake_ref, tag=tag)
        try:
            metadata = await mapped(lambda: self.nix.metadata(flake_ref, timeout=self.timeout, refresh=refresh),
                                    "", flake_ref, tag, self.timeout)
        except ForgeError as error:
            # An unknown branch or an unreachable flake is not asked of Nix again for a while,
            # however many names are pulled at that tag meanwhile (unless expired since it started).
            if generation == self._generation:
                self._failed[flake_ref] = (error.fresh(), self.clock.seconds() + FAILED_LOCK_TTL)
            while len(self._failed) > self.capacity:
                self._failed.popitem(last=False)
            raise
        url = metadata.get("url")
        lock = FlakeLock(flake_ref, url if isinstance(url, str) else flake_ref, locked_revision(metadata),
                         metadata, self.clock.seconds(), generation)
        kept = self._locks.get(flake_ref)
        if kept is None or kept.generation <= generation:  # an older fetch ending last keeps the newer lock
            self._locks[flake_ref] = lock
        self._locks.move_to_end(flake_ref)
        while len(self._locks) > self.capacity:
            self._locks.popitem(last=False)
        for listener in self.listeners:
            outcome = listener(tag, lock)
            if outcome is not None:
                await outcome
        return lock
