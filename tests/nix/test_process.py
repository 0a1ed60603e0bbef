"""The process runner: line splitting, environment, process groups, timeout, TERM then KILL."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from nixforge.nix.process import (
    CollectingProtocol,
    LineSplitter,
    ProcessResult,
    Signaller,
    find_setsid,
    spawn,
)
from tests.nix.conftest import FakeProcessReactor, RecordingSignaller, living


def split(chunks: list[bytes], max_line_length: int = 64 * 1024) -> list[str]:
    lines: list[str] = []
    splitter = LineSplitter(lines.append, max_line_length)
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.flush()
    return lines


def test_lines_split_across_chunks() -> None:
    assert split([b"ab", b"c\nde", b"f\r\n\ng"]) == ["abc", "def", "", "g"]


def test_lines_arrive_as_soon_as_complete() -> None:
    lines: list[str] = []
    splitter = LineSplitter(lines.append)
    splitter.feed(b"one\ntw")
    assert lines == ["one"]
    splitter.feed(b"o\n")
    assert lines == ["one", "two"]


def test_over_long_lines_are_cut() -> None:
    assert split([b"abcdefg", b"hij\nxy\n"], max_line_length=4) == ["abcd", "efgh", "ij", "xy"]


def test_no_final_newline_is_flushed_and_bad_utf8_replaced() -> None:
    assert split([b"\xffend"]) == ["\ufffdend"]


def test_protocol_keeps_stdout_and_reports_exit(fake_reactor: FakeProcessReactor) -> None:
    lines: list[str] = []
    protocol = CollectingProtocol(lines.append)
    outcomes: list[object] = []
    protocol.ended.addCallback(outcomes.append)
    fake_reactor.spawnProcess(protocol, "x", ["x"])
    process = fake_reactor.processes[0]
    assert process.protocol.transport.stdin_closed
    process.stdout(b'{"a":')
    process.stderr(b"first\nsecond")
    process.stdout(b"1}")
    assert lines == ["first"]
    process.exit(3)
    assert lines == ["first", "second"]
    assert b"".join(protocol.stdout) == b'{"a":1}'
    assert outcomes == [(3, None)]


def test_spawn_uses_setsid_and_merges_the_environment(
    fake_reactor: FakeProcessReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIXFORGE_TEST_INHERITED", "yes")
    spawn(fake_reactor, ["nix", "build"], print, env={"EXTRA": "1"}, setsid="/usr/bin/setsid")
    (process,) = fake_reactor.processes
    assert process.executable == "/usr/bin/setsid"
    assert process.args == ["/usr/bin/setsid", "nix", "build"]
    assert process.env["NIXFORGE_TEST_INHERITED"] == "yes"
    assert process.env["EXTRA"] == "1"
    assert process.env["PATH"] == os.environ["PATH"]


def test_timeout_sends_term_then_kill_to_the_group_and_descendants(
    fake_reactor: FakeProcessReactor, signaller: RecordingSignaller
) -> None:
    running = spawn(
        fake_reactor, ["nix"], print, timeout=10, kill_grace=5, setsid="/usr/bin/setsid", signaller=signaller
    )
    signaller.children[running.pid] = [running.pid + 100]
    results: list[ProcessResult] = []
    running.when_finished().addCallback(results.append)
    fake_reactor.advance(9.9)
    assert signaller.sent == []
    fake_reactor.advance(0.1)
    assert signaller.sent == [("group", running.pid, signal.SIGTERM)]
    fake_reactor.advance(5)
    assert signaller.sent[1:] == [
        ("group", running.pid, signal.SIGKILL),
        ("process", running.pid + 100, signal.SIGKILL),
    ]
    assert results == []
    fake_reactor.processes[0].exit(sig=signal.SIGKILL)
    assert signaller.sent[-1] == ("group", running.pid, signal.SIGKILL)
    assert results == [ProcessResult(None, signal.SIGKILL, b"", timed_out=True, terminated=True)]
    assert fake_reactor.getDelayedCalls() == []


def test_exit_in_time_cancels_the_timers(fake_reactor: FakeProcessReactor, signaller: RecordingSignaller) -> None:
    running = spawn(fake_reactor, ["nix"], print, timeout=10, setsid="/s", signaller=signaller)
    fake_reactor.processes[0].stdout(b"[]")
    fake_reactor.processes[0].exit(0)
    assert fake_reactor.getDelayedCalls() == []
    assert running.result == ProcessResult(0, None, b"[]")
    results: list[ProcessResult] = []
    running.terminate().addCallback(results.append)
    assert results == [running.result]
    assert signaller.sent == []


def test_without_setsid_only_the_process_is_signalled(
    fake_reactor: FakeProcessReactor, signaller: RecordingSignaller
) -> None:
    running = spawn(fake_reactor, ["nix"], print, kill_grace=1, setsid=None, signaller=signaller)
    assert fake_reactor.processes[0].args == ["nix"]
    running.terminate()
    running.terminate()
    fake_reactor.advance(1)
    assert signaller.sent == [("process", running.pid, signal.SIGTERM), ("process", running.pid, signal.SIGKILL)]


def test_group_not_made_yet_falls_back_to_the_process(
    fake_reactor: FakeProcessReactor, signaller: RecordingSignaller
) -> None:
    signaller.groups_exist = False
    running = spawn(fake_reactor, ["nix"], print, setsid="/s", signaller=signaller)
    running.terminate()
    assert signaller.sent == [("group", running.pid, signal.SIGTERM), ("process", running.pid, signal.SIGTERM)]


def test_setsid_is_found() -> None:
    setsid = find_setsid()
    assert setsid is not None
    assert os.access(setsid, os.X_OK)


@pytest_twisted.inlineCallbacks
def test_real_child_leads_its_own_group_and_stderr_streams(reactor: Any, nonce: str) -> Any:
    lines: list[str] = []
    first_line: Deferred[None] = Deferred()

    def on_line(line: str) -> None:
        lines.append(line)
        if not first_line.called:
            first_line.callback(None)

    script = f"echo out; echo err-{nonce} >&2; exec /bin/sleep 30 0.000{int(nonce, 16)}"
    running = spawn(reactor, ["/bin/sh", "-c", script], on_line, setsid=find_setsid())
    try:
        yield first_line
        assert os.getpgid(running.pid) == running.pid
        assert os.getsid(running.pid) == running.pid
    finally:
        result = yield running.terminate()
    assert result.signal == signal.SIGTERM
    assert result.stdout == b"out\n"
    assert lines == [f"err-{nonce}"]
    assert living(f"0.000{int(nonce, 16)}") == []


@pytest_twisted.inlineCallbacks
def test_real_group_ignoring_term_is_killed_with_its_other_session_descendants(reactor: Any, nonce: str) -> Any:
    marker = f"0.000{int(nonce, 16)}"
    # The shell and a sleep ignore SIGTERM; a second sleep escapes into its own session, as nix builders do.
    script = f"trap '' TERM; /bin/sleep 60 {marker} & {find_setsid()} /bin/sleep 61 {marker} & wait"
    started = reactor.seconds()
    running = spawn(reactor, ["/bin/sh", "-c", script], print, timeout=0.5, kill_grace=0.5, setsid=find_setsid())
    result = yield running.when_finished()
    assert result.timed_out
    assert result.signal == signal.SIGKILL
    assert reactor.seconds() - started < 5
    assert living(marker) == []


def test_real_signaller_tolerates_vanished_processes() -> None:
    signaller = Signaller()
    # A pid far above pid_max never exists.
    signaller.to_group(2**30, signal.SIGTERM)
    signaller.to_process(2**30, signal.SIGTERM)
    assert signaller.descendants(2**30) == []
    assert os.getpid() in signaller.descendants(os.getppid()) or os.getppid() == 1
