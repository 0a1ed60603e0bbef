"""Log observers filtered at the configured LOG_LEVEL, for `twistd nixforge` and for forge.tac; batched lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.logfile import LogFile

# Set by `use_for_twistd` while options are parsed; read when twistd calls `twistd_observer`.
_twistd_settings: dict[str, Any] = {"level": "INFO", "logfile": "-"}
# The text stream the log observer made last writes to, and its level: where batched lines go too.
_current: dict[str, Any] = {"stream": None, "level": "INFO"}


def current_stream() -> TextIO | None:
    """The stream of the text log observer nixforge made (None before, or under --syslog/--logger)."""
    return _current["stream"]


def current_level() -> LogLevel:
    """The level of the log observer nixforge made."""
    return LogLevel.levelWithName(str(_current["level"]).lower())


def _text_observer(stream: TextIO, level: str) -> ILogObserver:
    _current.update(stream=stream, level=level)
    return filtered(textFileLogObserver(stream), level)


def filtered(observer: ILogObserver, level: str) -> ILogObserver:
    """Wrap `observer` so that only events at `level` (DEBUG, INFO, WARN, ERROR) or above pass."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level.lower()))
    return FilteringLogObserver(observer, [predicate])


def stdout_observer(level: str, stream: TextIO | None = None) -> ILogObserver:
    """The text log on standard output (journald under systemd), filtered at `level`."""
    return _text_observer(stream or sys.stdout, level)


def use_for_twistd(twistd_options: Any, level: str) -> None:
    """Make twistd log through a level filter, keeping its own --logfile choice.

    Does nothing when the user picked `--logger` or `--syslog` themselves.
    """
    if twistd_options is None or twistd_options.get("logger") or twistd_options.get("syslog"):
        return
    logfile = twistd_options.get("logfile")
    if not logfile:
        logfile = "-" if twistd_options.get("nodaemon") else "twistd.log"
    _twistd_settings.update(level=level, logfile=logfile)
    twistd_options["logger"] = f"{__name__}.twistd_observer"


def observer_for_command_line(argv: list[str], level: str) -> ILogObserver | None:
    """For a tac: the log observer twistd would make from `argv`, filtered at `level`.

    A tac cannot see twistd's parsed options, so they are read again from the command line:
    `--logfile`/`-l` wins, else standard output with `--nodaemon`, else `twistd.log` as twistd does.
    None when twistd was told to use `--syslog` or its own `--logger` (leave logging to it).
    """
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    try:
        options.parseOptions(argv)
    except (usage.UsageError, SystemExit):
        return stdout_observer(level)
    if options.get("syslog") or options.get("logger"):
        return None
    logfile = options.get("logfile") or ("-" if options.get("nodaemon") else "twistd.log")
    stream = sys.stdout if logfile == "-" else LogFile.fromFullPath(logfile)
    return _text_observer(stream, level)


def twistd_observer() -> ILogObserver:
    """The factory twistd calls (via --logger) to make nixforge's log observer."""
    logfile = _twistd_settings["logfile"]
    stream = sys.stdout if logfile == "-" else LogFile.fromFullPath(logfile)
    return _text_observer(stream, _twistd_settings["level"])


@define(eq=False)
class BatchedLines:
    """Log lines of one namespace at INFO, formatted as Twisted's text observer would, written in batches.

    Each line is kept in order and written within `interval` seconds (or as soon as `max_lines` wait),
    in one write and one flush, to the stream `stream()` gives at that moment (the log observer's,
    which twistd makes only after the service tree). Without such a stream (--syslog, --logger, a
    tac's own observer) each line goes through `fallback` (a Twisted Logger) instead. `stop` (at
    shutdown) writes what waits; later lines are written at once. Nothing is written when the log
    level is above INFO.
    """

    clock: Any
    namespace: str
    stream: Callable[[], TextIO | None] = current_stream
    level: Callable[[], LogLevel] = current_level
    fallback: Logger = field(factory=Logger)
    interval: float = 0.5
    max_lines: int = 1000
    _waiting: list[str] = field(factory=list, init=False)
    _call: IDelayedCall | None = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)
    _second: int = field(default=-1, init=False)
    _prefix: str = field(default="", init=False)

    def line(self, text: str) -> None:
        """Log one line (no newline in it)."""
        self._waiting.append(self._stamp() + text + "\n")
        if self._stopped or len(self._waiting) >= self.max_lines:
            self.flush()
        elif self._call is None:
            self._call = self.clock.callLater(self.interval, self.flush)

    def flush(self) -> None:
        """Write every waiting line now."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        lines, self._waiting = self._waiting, []
        if not lines or self.level() > LogLevel.info:
            return
        stream = self.stream()
        if stream is None:
            for text in lines:
                self.fallback.info("{line}", line=text.partition("] ")[2].rstrip("\n"))
            return
        stream.write("".join(lines))
        stream.flush()

    def stop(self) -> None:
        """Write what waits; from now on every line is written at once."""
        self._stopped = True
        self.flush()

    def _stamp(self) -> str:
        """`<time> [<namespace>#info] `, as Twisted's text observer writes it; formatted once a second."""
        now = self.clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            self._prefix = f"{stamp} [{self.namespace}#info] "
        return self._prefix
