"""What nixforge.api.twisted_compat assumes of Twisted, and the public hooks the edge counts on.

These fail when a Twisted release changes what they rely on; setup.py's Twisted range is what they pass with.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_twisted
from twisted.copyright import version as twisted_version
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel, Request

from nixforge.api.twisted_compat import (
    BAD_REQUEST_HOOK,
    TRANSPORT_BUFFER_ATTRIBUTES,
    BadRequestHook,
    count_sent,
    transport_idle,
)

SETUP = Path(__file__).resolve().parents[2] / "setup.py"


class Holder(Protocol):
    """Server side: hands its connection (a tcp.Server) to the test."""

    def __init__(self, made: Deferred[Protocol]) -> None:
        self.made = made

    def connectionMade(self) -> None:
        self.made.callback(self)


class Reader(Protocol):
    """Client side: fires `got` once `size` bytes arrived."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.received = 0
        self.got: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.size and not self.got.called:
            self.got.callback(None)


@pytest_twisted.ensureDeferred
async def test_transport_idle_reads_the_buffer_of_a_real_tcp_server() -> None:
    made: Deferred[Protocol] = Deferred()
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: Holder(made)), interface="127.0.0.1")
    try:
        reader = Reader(3 * 1024 * 1024)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), reader)
        server = await made
        transport = server.transport
        assert type(transport) is tcp.Server
        assert all(hasattr(transport, name) for name in TRANSPORT_BUFFER_ATTRIBUTES)
        assert transport_idle(transport)
        transport.write(b"x" * (3 * 1024 * 1024))  # buffered by Twisted until the reactor writes it
        assert not transport_idle(transport)
        await reader.got
        assert transport_idle(transport)
        transport.loseConnection()
    finally:
        await port.stopListening()


def test_sent_length_is_what_twisted_counts_as_written() -> None:
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    request = Request(channel)
    request.method, request.clientproto, request.uri = b"GET", b"HTTP/1.1", b"/"
    assert request.sentLength == 0
    request.write(b"abc")
    assert request.sentLength == 3
    count_sent(request, 1000)
    assert request.sentLength == 1003


class Recording(BadRequestHook):
    """Records where Twisted would answer a bare 400, and the public hooks the edge overrides."""

    def __init__(self) -> None:
        super().__init__()
        self.bad = 0
        self.calls: list[str] = []

    def bad_request(self) -> None:
        self.bad += 1
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        self.calls.append("line")
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        self.calls.append("header")
        return super().headerReceived(line)

    def allContentReceived(self) -> None:
        self.calls.append("content")
        super().allContentReceived()


def feed(data: bytes, **limits: int) -> Recording:
    channel = Recording()
    for name, value in limits.items():
        setattr(channel, name, value)
    channel.makeConnection(StringTransport())
    channel.dataReceived(data)
    return channel


@pytest.mark.parametrize("data, limits", [
    (b"GARBAGE\r\n\r\n", {}),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", {}),
    (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", {}),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + b"\r\n\r\n", {"totalHeadersSize": 64}),
    (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 5 + b"\r\n", {"maxHeaders": 3}),
])
def test_twisted_answers_bad_requests_through_the_hook(data: bytes, limits: dict[str, int]) -> None:
    assert hasattr(HTTPChannel, BAD_REQUEST_HOOK)
    assert feed(data, **limits).bad == 1


def test_the_public_hooks_run_once_per_line_header_and_request() -> None:
    channel = feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n")
    assert channel.bad == 0
    assert channel.calls == ["line", "line", "line", "header", "line", "header", "content"]


def test_the_installed_twisted_is_in_the_tested_range() -> None:
    found = re.search(r'"twisted\[tls\]>=([\d.]+),<([\d.]+)"', SETUP.read_text(encoding="utf-8"))
    assert found, "setup.py must give Twisted a tested range"
    low, high = (tuple(int(part) for part in text.split(".")) for text in found.groups())
    installed = tuple(int(part) for part in re.findall(r"\d+", twisted_version)[:3])
    assert low <= installed < high
