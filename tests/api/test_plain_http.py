"""A TLS ClientHello on the plain port gets an immediate 400 and a close; HTTP passes untouched."""

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from nixforge.api.plain_http import TLS_REFUSAL, RefuseTLSFactory


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def connect() -> tuple[Protocol, StringTransport, Recorder]:
    inner = Recorder()
    factory = RefuseTLSFactory(Factory.forProtocol(lambda: inner))
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, inner


def test_tls_client_hello_is_refused_at_once() -> None:
    protocol, transport, inner = connect()
    protocol.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert transport.value() == TLS_REFUSAL
    assert transport.disconnecting
    assert inner.received == b""


def test_http_passes_through_in_every_chunk() -> None:
    protocol, transport, inner = connect()
    protocol.dataReceived(b"GET /v2/ HTTP/1.1\r\n")
    protocol.dataReceived(b"\x16 later bytes are not inspected")
    assert inner.received == b"GET /v2/ HTTP/1.1\r\n\x16 later bytes are not inspected"
    assert not transport.disconnecting
