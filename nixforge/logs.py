"""Log observers filtered at the configured LOG_LEVEL, for `twistd nixforge` and for forge.tac."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.logfile import LogFile

# Set by `use_for_twistd` while options are parsed; read when twistd calls `twistd_observer`.
_twistd_settings: dict[str, Any] = {"level": "INFO", "logfile": "-"}


def filtered(observer: ILogObserver, level: str) -> ILogObserver:
    """Wrap `observer` so that only events at `level` (DEBUG, INFO, WARN, ERROR) or above pass."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level.lower()))
    return FilteringLogObserver(observer, [predicate])


def stdout_observer(level: str, stream: TextIO | None = None) -> ILogObserver:
    """The text log on standard output (journald under systemd), filtered at `level`."""
    return filtered(textFileLogObserver(stream or sys.stdout), level)


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
    return filtered(textFileLogObserver(stream), level)


def twistd_observer() -> ILogObserver:
    """The factory twistd calls (via --logger) to make nixforge's log observer."""
    logfile = _twistd_settings["logfile"]
    stream = sys.stdout if logfile == "-" else LogFile.fromFullPath(logfile)
    return filtered(textFileLogObserver(stream), _twistd_settings["level"])
