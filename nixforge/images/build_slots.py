"""BuildSlots: the build slots, pulls first; prebuilds only take a slot that no pull is waiting for."""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred

from nixforge.errors import TooManyBuilds

PULL = "pull"
PREBUILD = "prebuild"


class BuildSlots:
    """`size` slots. A pull waits in a bounded queue (`max_queued`, then TooManyBuilds); a prebuild
    waits behind every pull, and never takes the last free slot while `size` > 1, so a pull that
    arrives while prebuilds run finds a slot or waits only behind other pulls."""

    def __init__(self, size: int, max_queued: int) -> None:
        self.size = size
        self.max_queued = max_queued
        self._running = {PULL: 0, PREBUILD: 0}
        self._waiting: dict[str, deque[Deferred[str]]] = {PULL: deque(), PREBUILD: deque()}

    @property
    def running(self) -> int:
        """Slots held now."""
        return self._running[PULL] + self._running[PREBUILD]

    @property
    def queued(self) -> int:
        """Builds waiting for a slot (pulls and prebuilds)."""
        return len(self._waiting[PULL]) + len(self._waiting[PREBUILD])

    def acquire(self, kind: str = PULL) -> Deferred[str]:
        """Fire with the kind of slot held, once one is (`kind`, or a pull's if promoted meanwhile);
        the caller must `release` that kind after."""
        if kind == PULL and len(self._waiting[PULL]) >= self.max_queued:
            raise TooManyBuilds("too many builds queued; retry later", retry_after=30)
        waiter: Deferred[str] = Deferred(self._leave)
        self._waiting[kind].append(waiter)
        self._grant()
        return waiter

    def promote(self, waiter: Deferred[str]) -> None:
        """A waiting prebuild that a pull now waits for: it waits as a pull from now on."""
        if waiter in self._waiting[PREBUILD]:
            self._waiting[PREBUILD].remove(waiter)
            self._waiting[PULL].append(waiter)
            self._grant()

    def _leave(self, waiter: Deferred[str]) -> None:
        for queue in self._waiting.values():
            if waiter in queue:
                queue.remove(waiter)

    def release(self, kind: str = PULL) -> None:
        """Give a slot back; the next waiting pull (else prebuild) gets it."""
        self._running[kind] -= 1
        self._grant()

    def _prebuild_room(self) -> bool:
        limit = max(1, self.size - 1)
        return not self._waiting[PULL] and self._running[PREBUILD] < limit

    def _grant(self) -> None:
        while self.running < self.size:
            if self._waiting[PULL]:
                kind = PULL
            elif self._waiting[PREBUILD] and self._prebuild_room():
                kind = PREBUILD
            else:
                return
            self._running[kind] += 1
            self._waiting[kind].popleft().callback(kind)
