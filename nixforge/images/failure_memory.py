"""FailureMemory: a failed build, remembered per (name, tag) at the revision it was locked to, for a TTL.

A pull inside the TTL gets the error of the failed build again (class, message, detail) without any
Nix run: a fresh copy each time, so no traceback grows from one answer to the next and no frame of the
failed build (nor its locals) is kept. The memory no longer answers once the TTL is over, once the tag is seen locked
to another revision (a refresh or another plan found the branch moved), or once it is forgotten
(a refresh of that name): the next pull then plans and builds at once.
"""

from __future__ import annotations

from collections import OrderedDict

from attrs import frozen

from nixforge.errors import ForgeError

FAILURE_TTL = 60.0
"""Default seconds a failed build is answered from memory (NIXFORGE_FAILURE_TTL)."""


@frozen
class _Failure:
    locked: str
    error: ForgeError
    expires_at: float


class FailureMemory:
    """A bounded map (name, tag) → the failure of its last build; the oldest go first when full."""

    def __init__(self, ttl: float = FAILURE_TTL, capacity: int = 4096) -> None:
        self.ttl = ttl
        self._capacity = capacity
        self._failures: OrderedDict[tuple[str, str], _Failure] = OrderedDict()

    def remember(self, name: str, tag: str, locked: str, error: ForgeError, now: float) -> None:
        """Answer `error` for name:tag while the tag stays locked to `locked`, for `ttl` seconds."""
        key = (name, tag)
        self._failures[key] = _Failure(locked, error.fresh(), now + self.ttl)
        self._failures.move_to_end(key)
        while len(self._failures) > self._capacity:
            self._failures.popitem(last=False)

    def get(self, name: str, tag: str, now: float, current_lock: str | None) -> ForgeError | None:
        """A fresh copy of name:tag's remembered error, unless expired or `current_lock` is another revision."""
        failure = self._failures.get((name, tag))
        if failure is None:
            return None
        if now >= failure.expires_at or (current_lock is not None and current_lock != failure.locked):
            del self._failures[(name, tag)]
            return None
        return failure.error.fresh()

    def forget(self, name: str | None = None) -> list[tuple[str, str]]:
        """Drop the failures of `name` (every name when None); return the (name, tag) pairs dropped."""
        dropped = [key for key in self._failures if name is None or key[0] == name]
        for key in dropped:
            del self._failures[key]
        return dropped
