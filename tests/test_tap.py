"""The twistd plugin is found, and makeService wires a registry that listens where configured."""

from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins

from nixforge.config import ForgeConfig
from nixforge.store.gc_service import GcTimerService
from nixforge.tap import Options, makeService


class ThreadedMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock that accepts results from the thread pool (GC runs at start-up) and drops them."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[object] = []

    def callFromThread(self, function: object, *args: object, **kwargs: object) -> None:
        self.from_threads.append(function)


def test_the_plugin_is_discoverable() -> None:
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert "nixforge" in makers
    assert makers["nixforge"].options is Options


def test_make_service_listens_on_the_configured_endpoint(tmp_path: Path) -> None:
    reactor = ThreadedMemoryReactor()
    options = Options()
    options.parseOptions(["--port", "tcp:5123:interface=127.0.0.1", "--data-dir", str(tmp_path / "data"),
                          "--flake", "path:/nonexistent"])
    service = makeService(options, reactor)
    service.startService()
    try:
        assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(5123, "127.0.0.1")]
        assert (tmp_path / "data" / "blobs" / "sha256").is_dir()
        [timer] = [child for child in service if isinstance(child, GcTimerService)]
        assert timer.step == 3600 and timer.clock is reactor and timer.running
    finally:
        service.stopService()


def test_numeric_port_uses_flask_host(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLASK_HOST", "127.0.0.2")
    monkeypatch.setenv("NIXFORGE_DATA_DIR", str(tmp_path))
    options = Options()
    options.parseOptions(["--port", "5124"])
    assert options.config == ForgeConfig.from_sources(
        {"FLASK_HOST": "127.0.0.2", "NIXFORGE_DATA_DIR": str(tmp_path)}, port="5124")
    reactor = ThreadedMemoryReactor()
    service = makeService(options, reactor)
    service.startService()
    try:
        assert reactor.tcpServers[0][0] == 5124 and reactor.tcpServers[0][3] == "127.0.0.2"
    finally:
        service.stopService()


def test_the_open_file_limit_is_raised_to_the_hard_limit_and_a_short_one_is_reported() -> None:
    import resource

    from twisted.logger import LogLevel, globalLogPublisher

    from nixforge.registry import raise_open_file_limit

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, before[1]))
        soft = raise_open_file_limit(1 << 62)
        assert soft == before[1] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert any(event.get("log_level") == LogLevel.warn and "open-file limit" in event.get("log_format", "")
                   for event in events)
    finally:
        globalLogPublisher.removeObserver(events.append)
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
