"""Batched log lines (the access log): one line per call, in order, written within the interval, at
`max_lines`, and at stop; formatted as Twisted's own text observer formats an INFO event."""

from __future__ import annotations

import io

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText

from nixforge.logs import BatchedLines


class CountingStream(io.StringIO):
    """A StringIO that counts its writes and flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


def batched(clock: Clock, stream: io.StringIO | None, level: LogLevel = LogLevel.info, **kwargs) -> BatchedLines:
    return BatchedLines(clock, "nixforge.api.access_log", stream=lambda: stream, level=lambda: level, **kwargs)


def test_lines_wait_for_the_interval_then_go_in_order_in_one_write() -> None:
    clock, stream = Clock(), CountingStream()
    lines = batched(clock, stream, interval=0.5)
    for number in range(5):
        lines.line(f"GET /v2/{number} 200 0 0.000s \"-\"")
        clock.advance(0.05)
    assert stream.getvalue() == ""
    clock.advance(0.5)
    written = stream.getvalue().splitlines()
    assert [line.rpartition("] ")[2] for line in written] == [f"GET /v2/{n} 200 0 0.000s \"-\"" for n in range(5)]
    assert (stream.writes, stream.flushes) == (1, 1)
    assert not clock.getDelayedCalls()


def test_a_full_batch_is_written_at_once() -> None:
    clock, stream = Clock(), CountingStream()
    lines = batched(clock, stream, max_lines=3)
    for number in range(7):
        lines.line(str(number))
    assert [line[-1] for line in stream.getvalue().splitlines()] == list("012345")
    assert stream.writes == 2
    clock.advance(1)
    assert stream.getvalue().splitlines()[-1].endswith("] 6")


def test_stop_writes_what_waits_and_later_lines_go_at_once() -> None:
    clock, stream = Clock(), CountingStream()
    lines = batched(clock, stream)
    lines.line("before")
    lines.stop()
    assert stream.getvalue().endswith("] before\n")
    assert not clock.getDelayedCalls()
    lines.line("after")
    assert stream.getvalue().endswith("] after\n")


def test_the_prefix_is_twisteds_own_for_an_info_event() -> None:
    clock, stream = Clock(), CountingStream()
    clock.advance(1_764_950_400.25)
    lines = batched(clock, stream)
    lines.line("GET /v2/ 200 2 0.001s \"curl\"")
    lines.flush()
    event = {"log_time": clock.seconds(), "log_namespace": "nixforge.api.access_log", "log_level": LogLevel.info,
             "log_format": "{line}", "line": "GET /v2/ 200 2 0.001s \"curl\""}
    assert stream.getvalue() == formatEventAsClassicLogText(event)


def test_without_a_stream_each_line_is_a_log_event() -> None:
    clock, events = Clock(), []
    lines = batched(clock, None, fallback=Logger(namespace="nixforge.api.access_log", observer=events.append))
    lines.line("one {braces} stay")
    lines.line("two")
    clock.advance(1)
    assert [event["line"] for event in events] == ["one {braces} stay", "two"]


def test_nothing_is_written_above_info() -> None:
    clock, stream = Clock(), CountingStream()
    lines = batched(clock, stream, level=LogLevel.warn)
    lines.line("quiet")
    clock.advance(1)
    assert stream.getvalue() == "" and stream.writes == 0
