"""ListeningService: listens once on a real loopback port, logs the address, fails start-up on a port in use."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher

from nixforge.listening import ListeningService


def service(description: str) -> ListeningService:
    return ListeningService(serverFromString(reactor, description), Factory.forProtocol(Protocol))


@pytest_twisted.ensureDeferred
async def test_listens_once_logs_the_port_and_stops_listening() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    listening = service("tcp:0:interface=127.0.0.1")
    try:
        listening.privilegedStartService()
        listening.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    port = await listening.listening
    number = port.getHost().port
    lines = [event for event in events if event.get("log_format", "").startswith("nixforge listening on")]
    assert [(event["host"], event["port"]) for event in lines] == [("127.0.0.1", number)]
    with socket.create_connection(("127.0.0.1", number), timeout=5):
        pass
    await listening.stopService()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", number), timeout=5).close()


def test_a_port_in_use_ends_start_up_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        number = taken.getsockname()[1]
        listening = service(f"tcp:{number}:interface=127.0.0.1")
        with pytest.raises(SystemExit) as exit_info:
            listening.privilegedStartService()
    message = str(exit_info.value.code)
    assert message.startswith(f"nixforge: cannot listen on 127.0.0.1:{number}: ") and "\n" not in message
    assert listening.port is None
