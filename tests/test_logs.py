"""Log observers: LOG_LEVEL filters; a tac logs where twistd's own options say."""

import io
from pathlib import Path

from twisted.logger import Logger, LogPublisher

from nixforge.logs import filtered, observer_for_command_line, stdout_observer


def emit_all(observer) -> None:
    publisher = LogPublisher(observer)
    log = Logger(namespace="test", observer=publisher)
    log.debug("debug {x}", x=1)
    log.info("info {line}", line="{braces}")
    log.error("error")


def test_level_filter() -> None:
    stream = io.StringIO()
    emit_all(stdout_observer("INFO", stream))
    text = stream.getvalue()
    assert "debug 1" not in text and "info {braces}" in text and "error" in text
    stream = io.StringIO()
    emit_all(stdout_observer("DEBUG", stream))
    assert "debug 1" in stream.getvalue()


def test_tac_logs_to_twistds_logfile(tmp_path: Path) -> None:
    logfile = tmp_path / "forge.log"
    observer = observer_for_command_line(["--logfile", str(logfile), "-y", "forge.tac"], "WARN")
    assert observer is not None
    emit_all(observer)
    text = logfile.read_text()
    assert "error" in text and "info" not in text


def test_tac_leaves_syslog_to_twistd() -> None:
    assert observer_for_command_line(["--syslog", "-y", "forge.tac"], "INFO") is None


def test_filtered_wraps_any_observer() -> None:
    events: list[dict] = []
    emit_all(filtered(events.append, "ERROR"))
    assert [event["log_format"] for event in events] == ["error"]
