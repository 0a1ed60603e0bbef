"""Run one child process in its own process group: stdout kept, stderr as lines, timeout, TERM then KILL."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

DEFAULT_MAX_LINE_LENGTH = 64 * 1024
DEFAULT_KILL_GRACE = 5.0


def find_setsid() -> str | None:
    """Return the absolute path of util-linux `setsid`, or None when it is not installed."""
    return shutil.which("setsid") or next(
        (path for path in ("/usr/bin/setsid", "/bin/setsid") if os.access(path, os.X_OK)), None
    )


@frozen
class ProcessResult:
    """How a child ended: its exit code or signal, its stdout, and whether we stopped it."""

    exit_code: int | None
    signal: int | None
    stdout: bytes
    timed_out: bool = False
    terminated: bool = False


class LineSplitter:
    """Cut a byte stream into text lines; over-long lines are cut at `max_line_length` bytes."""

    def __init__(self, on_line: Callable[[str], None], max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        self._on_line = on_line
        self._max = max_line_length
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """Add bytes; every complete line is passed on at once."""
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n")
            if newline == -1 or newline > self._max:
                if len(self._buffer) <= self._max:
                    return
                chunk, self._buffer = self._buffer[: self._max], self._buffer[self._max :]
            else:
                chunk, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            self._emit(chunk)

    def flush(self) -> None:
        """Pass on a final line that had no newline."""
        if self._buffer:
            chunk, self._buffer = self._buffer, b""
            self._emit(chunk)

    def _emit(self, chunk: bytes) -> None:
        self._on_line(chunk.removesuffix(b"\r").decode("utf-8", errors="replace"))


class CollectingProtocol(ProcessProtocol):
    """Keep the child's stdout, hand its stderr on line by line, fire `ended` with (code, signal)."""

    def __init__(self, on_line: Callable[[str], None], max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        self.stdout: list[bytes] = []
        self.stderr = LineSplitter(on_line, max_line_length)
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def connectionMade(self) -> None:
        """Nix reads nothing from us: close its stdin."""
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """Route output: fd 1 is kept, fd 2 is split into lines."""
        if childFD == 1:
            self.stdout.append(data)
        elif childFD == 2:
            self.stderr.feed(data)

    def processEnded(self, reason: Failure) -> None:
        """Flush stderr and report how the process ended."""
        self.stderr.flush()
        value = reason.value
        if isinstance(value, ProcessDone):
            outcome: tuple[int | None, int | None] = (0, None)
        elif isinstance(value, ProcessTerminated):
            outcome = (value.exitCode, value.signal)
        else:
            outcome = (None, None)
        self.ended.callback(outcome)


class Signaller:
    """Sends signals to a process, its group and its descendants (replaced by a fake in unit tests)."""

    def to_group(self, pgid: int, sig: int) -> bool:
        """Signal every process of group `pgid`; return False if there is no such group (yet)."""
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def to_process(self, pid: int, sig: int) -> None:
        """Signal one process; a vanished process is not an error."""
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def descendants(self, pid: int) -> list[int]:
        """Return the pids of every living descendant of `pid` (Linux /proc; empty elsewhere)."""
        children: dict[int, list[int]] = {}
        try:
            entries = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
        except OSError:
            return []
        for name in entries:
            try:
                with open(f"/proc/{name}/stat", "rb") as stat:
                    parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(name))
        found: list[int] = []
        pending = [pid]
        while pending:
            for child in children.get(pending.pop(), []):
                found.append(child)
                pending.append(child)
        return found


@define(eq=False)
class RunningProcess:
    """A spawned child: wait for it with `when_finished`, stop it with `terminate`."""

    reactor: Any
    pid: int
    in_group: bool
    protocol: CollectingProtocol
    kill_grace: float = DEFAULT_KILL_GRACE
    signaller: Signaller = field(factory=Signaller)
    timed_out: bool = False
    terminating: bool = False
    result: ProcessResult | None = None
    _waiters: list[Deferred[ProcessResult]] = field(factory=list)
    _timeout_call: IDelayedCall | None = None
    _kill_call: IDelayedCall | None = None

    def start_timer(self, timeout: float | None) -> None:
        """Terminate the process if it still runs after `timeout` seconds."""
        if timeout is not None and self.result is None:
            self._timeout_call = self.reactor.callLater(timeout, self._time_out)

    def when_finished(self) -> Deferred[ProcessResult]:
        """Return a new Deferred that fires with the result once the process has exited."""
        if self.result is not None:
            return succeed(self.result)
        waiter: Deferred[ProcessResult] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def terminate(self) -> Deferred[ProcessResult]:
        """Send SIGTERM to the process group, SIGKILL after the grace period; fire once it exited."""
        if self.result is None and not self.terminating:
            self.terminating = True
            self._signal(signal.SIGTERM)
            self._kill_call = self.reactor.callLater(self.kill_grace, self._kill)
        return self.when_finished()

    def ended(self, outcome: tuple[int | None, int | None]) -> None:
        """Record the end of the process and wake every waiter."""
        for call in (self._timeout_call, self._kill_call):
            if call is not None and call.active():
                call.cancel()
        if self.terminating and self.in_group:
            # Whatever of the group outlived its leader goes too.
            self.signaller.to_group(self.pid, signal.SIGKILL)
        exit_code, sig = outcome
        self.result = ProcessResult(
            exit_code=exit_code,
            signal=sig,
            stdout=b"".join(self.protocol.stdout),
            timed_out=self.timed_out,
            terminated=self.terminating,
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.result)

    def _time_out(self) -> None:
        self._timeout_call = None
        self.timed_out = True
        self.terminate()

    def _kill(self) -> None:
        self._kill_call = None
        # Nix runs builders in sessions of their own: find them before their parent dies.
        stragglers = self.signaller.descendants(self.pid)
        self._signal(signal.SIGKILL)
        for pid in stragglers:
            self.signaller.to_process(pid, signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        # Right after the spawn, `setsid` may not have made the group yet: signal the process then.
        if not (self.in_group and self.signaller.to_group(self.pid, sig)):
            self.signaller.to_process(self.pid, sig)


def spawn(
    reactor: Any,
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    kill_grace: float = DEFAULT_KILL_GRACE,
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    setsid: str | None = None,
    signaller: Signaller | None = None,
) -> RunningProcess:
    """Start `argv` (in a new session via `setsid` when given) with os.environ merged with `env`.

    `setsid` execs in place when its caller is not a group leader, which a freshly spawned child
    never is, so the child's pid is also its process group id.
    """
    protocol = CollectingProtocol(on_line, max_line_length)
    command = [setsid, *argv] if setsid else list(argv)
    environment = {**os.environ, **(env or {})}
    transport = reactor.spawnProcess(protocol, command[0], command, env=environment)
    running = RunningProcess(
        reactor=reactor,
        pid=transport.pid,
        in_group=setsid is not None,
        protocol=protocol,
        kill_grace=kill_grace,
        signaller=signaller or Signaller(),
    )
    running.start_timer(timeout)
    protocol.ended.addCallback(running.ended)
    return running
