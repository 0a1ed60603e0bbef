"""Parsing nix's stderr lines and streaming them to the log."""

from __future__ import annotations

import json

from twisted.logger import LogLevel, capturedLogs, formatEvent

from nixforge.nix.log_lines import LogEvent, NixLog, killed_tail, parse_line, strip_ansi


def nix_line(**entry: object) -> str:
    return "@nix " + json.dumps(entry)


def test_build_log_result_is_a_line() -> None:
    parsed = parse_line(nix_line(action="result", type=101, id=7, fields=["hello {x}"]))
    assert parsed.events == (LogEvent("hello {x}"),)
    assert parsed.activity == 7


def test_post_build_hook_line_is_a_line() -> None:
    assert parse_line(nix_line(action="result", type=107, id=1, fields=["uploaded"])).events == (LogEvent("uploaded"),)


def test_progress_results_are_not_lines() -> None:
    assert parse_line(nix_line(action="result", type=105, id=1, fields=[0, 1, 0, 0])).events == ()
    assert parse_line(nix_line(action="result", type=101, id=1, fields=[3])).events == ()


def test_error_message_loses_ansi_and_is_an_error() -> None:
    msg = "\x1b[31;1merror:\x1b[0m flake '\x1b[35;1mpath:/x\x1b[0m' does not provide attribute 'y'"
    parsed = parse_line(nix_line(action="msg", level=0, msg=msg))
    assert parsed.events == (LogEvent("error: flake 'path:/x' does not provide attribute 'y'", error=True),)


def test_multi_line_message_becomes_several_lines() -> None:
    msg = "error: builder failed\n       last 2 log lines:\n       > a\n\n       > b"
    texts = [event.text for event in parse_line(nix_line(action="msg", level=0, msg=msg)).events]
    assert texts == ["error: builder failed", "       last 2 log lines:", "       > a", "       > b"]


def test_warning_message_is_not_an_error() -> None:
    (event,) = parse_line(nix_line(action="msg", level=1, msg="warning: Git tree is dirty")).events
    assert event == LogEvent("warning: Git tree is dirty", error=False)


def test_start_at_info_level_is_a_line_and_names_the_build() -> None:
    parsed = parse_line(
        nix_line(
            action="start",
            id=9,
            level=3,
            type=105,
            text="building '/nix/store/abc-hello-1.0.drv'",
            fields=["/nix/store/abc-hello-1.0.drv", "", 1, 1],
        )
    )
    assert parsed.events == (LogEvent("building '/nix/store/abc-hello-1.0.drv'"),)
    assert parsed.started == (9, "hello-1.0")


def test_chatty_start_and_stop_are_not_lines() -> None:
    assert parse_line(nix_line(action="start", id=1, level=6, type=0, text="querying info")).events == ()
    parsed = parse_line(nix_line(action="stop", id=1))
    assert parsed.events == ()
    assert parsed.stopped == 1


def test_plain_and_broken_lines_pass_through() -> None:
    assert parse_line("fatal: couldn't find remote ref x").events == (LogEvent("fatal: couldn't find remote ref x"),)
    assert parse_line("@nix {not json").events == (LogEvent("@nix {not json"),)
    assert parse_line("@nix [1]").events == (LogEvent("@nix [1]"),)
    assert parse_line("   ").events == ()


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[1ma\x1b[0m\x1b]8;;http://x\x07b") == "ab"


def test_nix_log_logs_each_line_at_debug_and_keeps_a_bounded_tail() -> None:
    nix_log = NixLog(tail_lines=3, command="nix build")
    with capturedLogs() as events:
        for index in range(5):
            nix_log.feed(nix_line(action="result", type=101, id=1, fields=[f"line {index} {{x}}"]))
    assert list(nix_log.tail) == ["line 2 {x}", "line 3 {x}", "line 4 {x}"]
    lines = [event for event in events if "line" in event]
    assert [event["line"] for event in lines] == [f"line {index} {{x}}" for index in range(5)]
    assert all(event["log_level"] is LogLevel.debug for event in lines)
    assert all(event["log_namespace"] == "nixforge.nix" for event in lines)
    assert formatEvent(lines[0]) == "line 0 {x}"


def test_nix_log_prefixes_builder_lines_with_the_derivation_name() -> None:
    nix_log = NixLog()
    nix_log.feed(nix_line(action="start", id=4, level=3, type=105, text="building", fields=["/nix/store/h-app-2.drv"]))
    nix_log.feed(nix_line(action="result", type=101, id=4, fields=["compiling"]))
    nix_log.feed(nix_line(action="stop", id=4))
    nix_log.feed(nix_line(action="result", type=101, id=4, fields=["late"]))
    assert list(nix_log.tail) == ["building", "app-2> compiling", "late"]


def test_nix_log_retains_errors_apart_from_the_tail() -> None:
    nix_log = NixLog(tail_lines=1)
    nix_log.feed(nix_line(action="msg", level=0, msg="error: getting status of '/x': No such file"))
    nix_log.feed(nix_line(action="result", type=101, id=1, fields=["noise"]))
    assert list(nix_log.errors) == ["error: getting status of '/x': No such file"]
    assert list(nix_log.tail) == ["noise"]


def test_a_killed_run_loses_nix_s_interrupted_by_the_user_line() -> None:
    tail = ["building 'x.drv'", "x> sleeping", "error: interrupted by the user"]
    assert killed_tail(tail) == ["building 'x.drv'", "x> sleeping"]
    # A builder's own line that happens to say it is kept: only Nix's message goes.
    assert killed_tail(["x> interrupted by the user"]) == ["x> interrupted by the user"]
