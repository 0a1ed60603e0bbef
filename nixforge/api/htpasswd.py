"""An htpasswd file of bcrypt entries, re-read (off the reactor) whenever its stat changes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

log = Logger()

BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")


def parse_htpasswd(text: bytes) -> dict[str, bytes]:
    """User → bcrypt hash from htpasswd lines (`user:$2y$…`); other schemes and junk lines are skipped."""
    entries: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, colon, hashed = line.partition(b":")
        if not colon or not user or not hashed.startswith(BCRYPT_PREFIXES):
            log.warn("htpasswd line {number} is not a bcrypt entry (htpasswd -B); ignored", number=number)
            continue
        try:
            entries[user.decode("utf-8")] = hashed
        except UnicodeDecodeError:
            log.warn("htpasswd line {number}: the user name is not UTF-8; ignored", number=number)
    return entries


def _stat_key(result: os.stat_result) -> tuple[int, int, int, int]:
    return (result.st_ino, result.st_dev, result.st_size, result.st_mtime_ns)


class HtpasswdFile:
    """The entries of one htpasswd file.

    `entries()` answers from memory; at most once every `check_interval` seconds it first stats the
    file in the thread pool (`run_in_thread`) and, if inode, size or mtime changed, reads and parses
    it there too. A file that disappears or cannot be read leaves no entries: nobody gets in.
    """

    def __init__(
        self,
        path: str,
        run_in_thread: Callable[..., Deferred[Any]],
        clock: Any,
        check_interval: float = 1.0,
    ) -> None:
        self.path = path
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._check_interval = check_interval
        self._entries: dict[str, bytes] = {}
        self._stat: tuple[int, int, int, int] | None = None
        self._checked_at: float | None = None
        self._checking: Deferred[None] | None = None
        self._waiting: list[Deferred[dict[str, bytes]]] = []

    def load(self) -> None:
        """Read the file now, in this thread (start-up, before the reactor runs)."""
        self._apply(self._read_if_changed(None))
        self._checked_at = self._clock.seconds()

    def entries(self) -> Deferred[dict[str, bytes]]:
        """The current user → hash mapping, re-checking the file first when the interval has passed."""
        due = self._checked_at is None or self._clock.seconds() - self._checked_at >= self._check_interval
        if not due and self._checking is None:
            return succeed(self._entries)
        waiter: Deferred[dict[str, bytes]] = Deferred()
        self._waiting.append(waiter)
        if self._checking is None:
            self._checked_at = self._clock.seconds()
            self._checking = self._run_in_thread(self._read_if_changed, self._stat)
            self._checking.addCallbacks(self._apply, self._failed)
            self._checking.addBoth(self._release)
        return waiter

    def _read_if_changed(
        self, previous: tuple[int, int, int, int] | None
    ) -> tuple[tuple[int, int, int, int] | None, dict[str, bytes] | None]:
        """Worker thread: (stat key, parsed entries or None when unchanged)."""
        try:
            key = _stat_key(os.stat(self.path))
            if key == previous:
                return key, None
            with open(self.path, "rb") as file:
                return key, parse_htpasswd(file.read(16 * 1024 * 1024))
        except OSError as error:
            log.error("cannot read the htpasswd file {path}: {error}; nobody can log in",
                      path=self.path, error=error.strerror)
            return None, {}

    def _apply(self, result: tuple[tuple[int, int, int, int] | None, dict[str, bytes] | None]) -> None:
        key, entries = result
        if entries is not None:
            if key is not None:
                log.info("htpasswd file {path} loaded: {count} users", path=self.path, count=len(entries))
            self._entries = entries
        self._stat = key

    def _failed(self, failure: Any) -> None:
        log.failure("checking the htpasswd file failed", failure=failure)

    def _release(self, _: object) -> None:
        self._checking = None
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(self._entries)
