"""One shared job per key; every caller gets its own Deferred and error: cancelling one cancels no other."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from nixforge.errors import ForgeError


class SingleFlight:
    """Run at most one job per key at a time; later callers for the key wait on the same job."""

    def __init__(self) -> None:
        self._waiters: dict[Hashable, list[Deferred[Any]]] = {}

    def running(self, key: Hashable) -> bool:
        """Tell whether a job for `key` is in flight."""
        return key in self._waiters

    def run(self, key: Hashable, start: Callable[[], Any]) -> Deferred[Any]:
        """Return a fresh Deferred for the result of the job for `key`, starting it if needed.

        Cancelling the returned Deferred only detaches that caller: the job goes on for the others
        and its result is still recorded by whatever `start` does.
        """
        waiter: Deferred[Any] = Deferred()
        if key in self._waiters:
            self._waiters[key].append(waiter)
            return waiter
        self._waiters[key] = [waiter]
        maybeDeferred(start).addBoth(self._finish, key)
        return waiter

    def _finish(self, result: Any, key: Hashable) -> None:
        for waiter in self._waiters.pop(key):
            if waiter.called:
                continue
            if isinstance(result, Failure):
                waiter.errback(_own_failure(result))
            else:
                waiter.callback(result)


def _own_failure(failure: Failure) -> Failure:
    """The job's failure for one waiter: a registry error is copied afresh for each, so one waiter's
    raise never lengthens (or swaps) the traceback another waiter's error carries."""
    if isinstance(failure.value, ForgeError):
        return Failure(failure.value.fresh())
    return failure
