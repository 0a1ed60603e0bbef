"""Fixtures for the Nix layer: a fake process reactor, a signal recorder, real offline nix flakes."""

from __future__ import annotations

import os
import platform
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from nixforge.nix.process import Signaller

# No experimental feature is turned on here: NixClient must turn on nix-command and flakes itself.
OFFLINE_NIX_CONFIG = "substituters =\nexperimental-features ="
SYSTEM = f"{platform.machine()}-linux"


class FakeTransport:
    """Stands in for a process transport: has a pid, records closeStdin."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdin_closed = False

    def closeStdin(self) -> None:
        self.stdin_closed = True


class FakeProcess:
    """One process the fake reactor 'spawned': drive its protocol with output and an exit."""

    def __init__(self, protocol: ProcessProtocol, executable: str, args: list[str], env: dict[str, str]) -> None:
        self.protocol = protocol
        self.executable = executable
        self.args = args
        self.env = env

    def stdout(self, data: bytes) -> None:
        self.protocol.childDataReceived(1, data)

    def stderr(self, data: bytes) -> None:
        self.protocol.childDataReceived(2, data)

    def exit(self, code: int = 0, sig: int | None = None) -> None:
        if code == 0 and sig is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(exitCode=None if sig else code, signal=sig))
        self.protocol.processEnded(reason)


class FakeProcessReactor(MemoryReactorClock):
    """A memory reactor with a clock that records spawnProcess calls instead of running anything."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        self._next_pid = 40000

    def spawnProcess(self, protocol: ProcessProtocol, executable: str, args: Any, env: Any = None, **_: Any):
        self._next_pid += 1
        transport = FakeTransport(self._next_pid)
        self.processes.append(FakeProcess(protocol, executable, list(args), dict(env or {})))
        protocol.makeConnection(transport)
        return transport


class RecordingSignaller(Signaller):
    """Records signals instead of sending them; `children` maps a pid to its fake descendants."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int]] = []
        self.children: dict[int, list[int]] = {}
        self.groups_exist = True

    def to_group(self, pgid: int, sig: int) -> bool:
        self.sent.append(("group", pgid, sig))
        return self.groups_exist

    def to_process(self, pid: int, sig: int) -> None:
        self.sent.append(("process", pid, sig))

    def descendants(self, pid: int) -> list[int]:
        return list(self.children.get(pid, []))


@pytest.fixture
def fake_reactor() -> FakeProcessReactor:
    return FakeProcessReactor()


@pytest.fixture
def signaller() -> RecordingSignaller:
    return RecordingSignaller()


@pytest.fixture
def reactor() -> Any:
    """The real (pytest-twisted) reactor, for tests that run real processes."""
    from twisted.internet import reactor as real_reactor

    return real_reactor


@pytest.fixture
def offline_nix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make nix work offline (no substituters), with a stock nix.conf's features: none."""
    monkeypatch.setenv("NIX_CONFIG", OFFLINE_NIX_CONFIG)


@pytest.fixture
def nonce() -> str:
    return secrets.token_hex(6)


def derivation(name: str, script: str, extra: str = "") -> str:
    """Nix source of a nixpkgs-free derivation running `script` with /bin/sh."""
    quoted = script.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return (
        f'derivation {{ name = "{name}"; system = "{SYSTEM}"; builder = "/bin/sh"; '
        f'args = [ "-c" "{quoted}" ]; {extra} }}'
    )


@pytest.fixture
def make_flake(tmp_path: Path, offline_nix: None) -> Callable[[dict[str, str]], str]:
    """Write a flake whose outputs are the given attribute → Nix expression; return its `path:` ref."""

    def write(attributes: dict[str, str]) -> str:
        directory = tmp_path / f"flake-{secrets.token_hex(4)}"
        directory.mkdir()
        body = "\n".join(f"    {name} = {expression};" for name, expression in attributes.items())
        text = f"{{\n  outputs = {{ self }}:\n  {{\n{body}\n  }};\n}}\n"
        (directory / "flake.nix").write_text(text)
        return f"path:{directory}"

    return write


@implementer(ILogObserver)
class LineObserver:
    """Collects the build lines nixforge.nix logs, with the time each arrived."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.events: list[LogEvent] = []
        self.lines: list[tuple[float, str]] = []
        self.waiting: list[tuple[str, Deferred[None]]] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") != "nixforge.nix" or "line" not in event:
            return
        self.events.append(event)
        self.lines.append((self.clock(), event["line"]))
        for item in list(self.waiting):
            if item[0] in event["line"]:
                self.waiting.remove(item)
                item[1].callback(None)

    def wait_for(self, text: str) -> Deferred[None]:
        """Fire once a line containing `text` has been logged."""
        waiter: Deferred[None] = Deferred()
        if any(text in line for _, line in self.lines):
            waiter.callback(None)
        else:
            self.waiting.append((text, waiter))
        return waiter

    def texts(self) -> list[str]:
        return [line for _, line in self.lines]


@pytest.fixture
def nix_lines(reactor: Any) -> Iterator[LineObserver]:
    observer = LineObserver(reactor.seconds)
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def living(marker: str) -> list[str]:
    """Processes whose command line contains `marker` (read from /proc; the test's own never does)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found
