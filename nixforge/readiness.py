"""Readiness: a periodic check that the data dir is writable, Nix runs (and the store answers), cached for /readyz."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from attrs import define, field, frozen
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from nixforge.redaction import redact

log = Logger()


@frozen
class Readiness:
    """The outcome of the last check: ready, or the problems found (scrubbed, one line each)."""

    checked: bool
    problems: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        """True once a check ran and found nothing wrong."""
        return self.checked and not self.problems


NOT_CHECKED = Readiness(checked=False, problems=("the first readiness check has not finished",))


def probe_writable(directory: str) -> None:
    """Create and remove a temporary file in `directory` (blocking: run it in a thread)."""
    handle, path = tempfile.mkstemp(prefix=".nixforge-ready-", dir=directory)
    os.close(handle)
    os.unlink(path)


@define(eq=False)
class ReadinessCheck:
    """Runs the checks (one at a time) and keeps the last result; never a process per probe."""

    data_dir: str
    run_in_thread: Callable[..., Deferred[Any]]
    nix_version: Callable[[], Deferred[str]]
    current: Readiness = NOT_CHECKED
    # With an object store: a request that must succeed (blocking), and the store's name for /readyz.
    store_probe: Callable[[], object] | None = None
    store_name: str = ""
    _running: Deferred[Readiness] | None = field(default=None, init=False)

    def check(self) -> Deferred[Readiness]:
        """Check now (or join the check in progress); fire with the new result."""
        if self._running is not None:
            return self._running
        writable = self.run_in_thread(probe_writable, self.data_dir).addCallbacks(
            lambda _: None, lambda failure: f"data dir not writable: {_reason(failure.value)}")
        nix = self.nix_version().addCallbacks(
            lambda _: None, lambda failure: f"nix does not run: {_reason(failure.value)}")
        checks = [writable, nix]
        if self.store_probe is not None:
            checks.append(self.run_in_thread(self.store_probe).addCallbacks(
                lambda _: None, lambda failure: f"store {self.store_name} unreachable: {_reason(failure.value)}"))
        running = gatherResults(checks).addCallback(self._checked)
        self._running = running if not running.called else None
        return running

    def _checked(self, problems: list[str | None]) -> Readiness:
        self._running = None
        result = Readiness(checked=True, problems=tuple(problem for problem in problems if problem))
        if result.problems != self.current.problems:
            log.info("readiness: {state}", state="; ".join(result.problems) or "ready")
        self.current = result
        return result


def _reason(error: BaseException) -> str:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return redact(text.splitlines()[0] if text else type(error).__name__)[:300]


class ReadinessService(TimerService):
    """Runs the readiness check every `interval` seconds while the registry runs."""

    def __init__(self, readiness: ReadinessCheck, interval: float, clock: Any = None) -> None:
        super().__init__(interval, readiness.check)
        if clock is not None:
            self.clock = clock
