"""Turn nix's stderr (``--log-format internal-json`` or plain) into human log lines."""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable

from attrs import define, field, frozen
from twisted.logger import Logger

log = Logger(namespace="nixforge.nix")

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_PREFIX = "@nix "

# Activity and result types of nix's internal-json logger (nix/src/libutil/logging.hh).
_ACT_BUILD = 105
_RES_BUILD_LOG_LINE = 101
_RES_POST_BUILD_LOG_LINE = 107
_LVL_ERROR = 0
_LVL_INFO = 3


def strip_ansi(text: str) -> str:
    """Remove ANSI colour and cursor escape sequences."""
    return _ANSI.sub("", text)


@frozen
class LogEvent:
    """One human-readable line from nix; `error` marks an error-level message."""

    text: str
    error: bool = False


@frozen
class ParsedLine:
    """What one stderr line means: human lines, and an activity started or stopped."""

    events: tuple[LogEvent, ...] = ()
    started: tuple[int, str] | None = None
    stopped: int | None = None
    activity: int | None = None


def _lines(text: str, error: bool) -> tuple[LogEvent, ...]:
    """Split a possibly multi-line message into events, without ANSI codes or blank lines."""
    return tuple(LogEvent(line, error) for line in strip_ansi(text).splitlines() if line.strip())


def _drv_name(drv_path: str) -> str:
    """`/nix/store/<hash>-hello-1.0.drv` → `hello-1.0`."""
    base = drv_path.rsplit("/", 1)[-1]
    base = base.removesuffix(".drv")
    return base.split("-", 1)[1] if "-" in base else base


def parse_line(raw: str) -> ParsedLine:
    """Parse one stderr line; lines that are not `@nix {json}` pass through unchanged."""
    if not raw.startswith(_PREFIX):
        return ParsedLine(events=(LogEvent(raw),) if raw.strip() else ())
    try:
        entry = json.loads(raw[len(_PREFIX) :])
    except ValueError:
        return ParsedLine(events=(LogEvent(raw),))
    if not isinstance(entry, dict):
        return ParsedLine(events=(LogEvent(raw),))
    action = entry.get("action")
    if action == "msg":
        msg = entry.get("msg")
        if not isinstance(msg, str):
            return ParsedLine()
        return ParsedLine(events=_lines(msg, entry.get("level") == _LVL_ERROR))
    if action == "result":
        return _parse_result(entry)
    if action == "start":
        return _parse_start(entry)
    if action == "stop" and isinstance(entry.get("id"), int):
        return ParsedLine(stopped=entry["id"])
    return ParsedLine()


def _parse_result(entry: dict[str, object]) -> ParsedLine:
    """A result: only build log lines are human text."""
    fields = entry.get("fields")
    if entry.get("type") not in (_RES_BUILD_LOG_LINE, _RES_POST_BUILD_LOG_LINE):
        return ParsedLine()
    if not isinstance(fields, list) or not fields or not isinstance(fields[0], str):
        return ParsedLine()
    activity = entry.get("id")
    return ParsedLine(
        events=(LogEvent(strip_ansi(fields[0])),),
        activity=activity if isinstance(activity, int) else None,
    )


def _parse_start(entry: dict[str, object]) -> ParsedLine:
    """An activity start: its text is a human line at info level or above."""
    text = entry.get("text")
    level = entry.get("level")
    events: tuple[LogEvent, ...] = ()
    if isinstance(text, str) and text and isinstance(level, int) and level <= _LVL_INFO:
        events = _lines(text, False)
    started = None
    fields = entry.get("fields")
    activity = entry.get("id")
    if (
        entry.get("type") == _ACT_BUILD
        and isinstance(activity, int)
        and isinstance(fields, list)
        and fields
        and isinstance(fields[0], str)
    ):
        started = (activity, _drv_name(fields[0]))
    return ParsedLine(events=events, started=started)


@define(eq=False)
class NixLog:
    """Log every human line at DEBUG as it arrives and keep the tail and the errors for reports."""

    tail_lines: int = 40
    error_lines: int = 200
    command: str = ""
    sink: Callable[[str], None] | None = None
    tail: deque[str] = field(init=False)
    errors: deque[str] = field(init=False)
    _builds: dict[int, str] = field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.tail = deque(maxlen=max(self.tail_lines, 0))
        self.errors = deque(maxlen=max(self.error_lines, 0))

    def feed(self, raw: str) -> None:
        """Handle one stderr line of nix."""
        parsed = parse_line(raw)
        if parsed.started is not None:
            self._builds[parsed.started[0]] = parsed.started[1]
        name = self._builds.get(parsed.activity) if parsed.activity is not None else None
        for event in parsed.events:
            line = f"{name}> {event.text}" if name else event.text
            log.debug("{line}", line=line, command=self.command)
            self.tail.append(line)
            if self.sink is not None:
                self.sink(line)
            if event.error:
                self.errors.append(event.text)
        if parsed.stopped is not None:
            self._builds.pop(parsed.stopped, None)


# What Nix itself says when it gets SIGTERM, which nixforge sends, not a user.
_INTERRUPTED = re.compile(r"(?:error: )?interrupted by the user\.?")


def killed_tail(lines: list[str]) -> list[str]:
    """The log tail of a nix run nixforge killed, without Nix's misleading "interrupted by the user"."""
    return [line for line in lines if not _INTERRUPTED.fullmatch(line.strip())]
