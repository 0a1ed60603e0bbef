"""The builds view: the running and last N builds, each with a bounded, scrubbed log one can follow live."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from nixforge.images.build_events import BuildStart, IBuildObserver
from nixforge.redaction import redact, redact_flake_ref

Writer = Callable[[str], None]


def _time(seconds: float | None) -> str | None:
    """RFC 3339 UTC, or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@define(eq=False)
class BuildRecord:
    """One build as the view shows it, and its log (the last `max_bytes` of it)."""

    start: BuildStart
    max_bytes: int
    phase: str = "queued"
    state: str = "running"
    finished: float | None = None
    error: str | None = None
    lines: deque[str] = field(factory=deque)
    size: int = 0
    dropped: int = 0
    followers: list[tuple[Writer, Deferred[None]]] = field(factory=list)

    def add(self, line: str) -> None:
        """Keep a (scrubbed) line, dropping the oldest beyond the size bound; tell the followers."""
        self.lines.append(line)
        self.size += len(line) + 1
        while self.size > self.max_bytes and self.lines:
            self.size -= len(self.lines.popleft()) + 1
            self.dropped += 1
        for write, _ in list(self.followers):
            write(line)

    def describe(self) -> dict[str, object]:
        """The JSON object of `/-/builds`."""
        return {
            "id": self.start.id,
            "name": self.start.name,
            "tag": self.start.tag,
            "locked": redact_flake_ref(self.start.locked),
            "revision": self.start.revision,
            "phase": self.phase,
            "state": self.state,
            "started": _time(self.start.started),
            "finished": _time(self.finished),
            "error": self.error,
        }


@implementer(IBuildObserver)
@define(eq=False)
class BuildBook:
    """Keeps every running build and the last `keep` finished ones (older finished ones are forgotten)."""

    keep: int = 50
    max_log_bytes: int = 1 << 20
    _builds: OrderedDict[str, BuildRecord] = field(factory=OrderedDict, init=False)

    def builds(self) -> list[dict[str, object]]:
        """Running and recent builds, newest first."""
        return [record.describe() for record in reversed(self._builds.values())]

    def has(self, build_id: str) -> bool:
        """True if the build is kept."""
        return build_id in self._builds

    def log_so_far(self, build_id: str) -> tuple[dict[str, object], list[str]] | None:
        """The build as `/-/builds` describes it and the lines its log keeps now; None if not kept."""
        record = self._builds.get(build_id)
        if record is None:
            return None
        return record.describe(), self._so_far(record)

    def _so_far(self, record: BuildRecord) -> list[str]:
        """The kept lines, after a note of how many were dropped, if any."""
        dropped = [f"[nixforge: {record.dropped} earlier lines dropped, the log keeps {self.max_log_bytes} bytes]"]
        return [*(dropped if record.dropped else []), *record.lines]

    def follow(self, build_id: str, write: Writer) -> Deferred[None] | None:
        """Write the log so far, then each new line; the Deferred fires when the build ends.

        None if no such build is kept. Cancelling the Deferred (the client left) stops the writes.
        """
        record = self._builds.get(build_id)
        if record is None:
            return None
        for line in self._so_far(record):
            write(line)
        if record.state != "running":
            return succeed(None)
        entry: tuple[Writer, Deferred[None]]

        def stop(_: Deferred[None]) -> None:
            if entry in record.followers:
                record.followers.remove(entry)

        ended: Deferred[None] = Deferred(canceller=stop)
        entry = (write, ended)
        record.followers.append(entry)
        return ended

    # IBuildObserver

    def build_started(self, start: BuildStart) -> None:
        """Add the build; forget the oldest finished ones beyond `keep`."""
        self._builds[start.id] = BuildRecord(start, self.max_log_bytes)
        self._forget_old()

    def build_phase(self, build_id: str, phase: str, at: float) -> None:
        """Note the phase."""
        record = self._builds.get(build_id)
        if record is not None:
            record.phase = phase

    def build_line(self, build_id: str, line: str) -> None:
        """Keep the line, scrubbed (no host path outside /nix/store, no credentials)."""
        record = self._builds.get(build_id)
        if record is not None:
            record.add(redact(line))

    def build_finished(self, build_id: str, outcome: str, finished: float, error: str | None) -> None:
        """Note the outcome and end every follower's stream."""
        record = self._builds.get(build_id)
        if record is None:
            return
        record.state, record.phase, record.finished = outcome, "done", finished
        record.error = redact(error) if error is not None else None
        record.add(f"[nixforge: build {outcome}{': ' + record.error if record.error else ''}]")
        followers, record.followers = record.followers, []
        for _, ended in followers:
            ended.callback(None)
        self._forget_old()

    def _forget_old(self) -> None:
        finished = [key for key, record in self._builds.items() if record.state != "running"]
        for key in finished[: max(0, len(finished) - self.keep)]:
            del self._builds[key]
