"""Remember, briefly, that a name or tag does not exist, so repeated pulls of it cost no Nix run."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from nixforge.errors import ForgeError

MISSING_TTL = 30.0
"""Seconds a NAME_UNKNOWN / MANIFEST_UNKNOWN answer is reused before Nix is asked again."""


class MissingCache:
    """A bounded map key → (error, expiry); the oldest entries go first when it is full.

    It keeps a detached copy of each error (no traceback, so no frames nor their locals) and hands out
    a fresh one on every hit: raising one object again and again would grow its traceback each time.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[Hashable, tuple[ForgeError, float]] = OrderedDict()

    def remember(self, key: Hashable, error: ForgeError, expires_at: float) -> None:
        """Answer (a copy of) `error` for `key` until `expires_at`."""
        self._entries[key] = (error.fresh(), expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def get(self, key: Hashable, now: float) -> ForgeError | None:
        """A fresh copy of the remembered error for `key`, unless it has expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        error, expires_at = entry
        if now >= expires_at:
            del self._entries[key]
            return None
        return error.fresh()

    def forget(self, name: str | None = None) -> None:
        """Drop what is remembered of repository `name` (keys `(name, tag)`), or everything when None."""
        for key in [key for key in self._entries
                    if name is None or (isinstance(key, tuple) and key[:1] == (name,))]:
            del self._entries[key]
