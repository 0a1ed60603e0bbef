"""EdgeSite/EdgeChannel in memory: bodies refused unread, head deadline, send timeout, caps, JSON refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from nixforge.api import RegistryApi
from nixforge.api.connection_caps import ConnectionCaps
from nixforge.api.edge import EdgeSite
from nixforge.api.refresh import MAX_BODY, body_limit

from .fake_images import FakeImageService

GET_V2 = b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n"


class CountingResource(Resource):
    """Answers `ok` and counts the requests that reached it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered = 0

    def render(self, request: object) -> bytes:
        self.rendered += 1
        return b"ok"


@pytest.fixture
def resource() -> CountingResource:
    return CountingResource()


def make_site(resource: Resource, clock: Clock, **options: object) -> EdgeSite:
    """An EdgeSite with the registry's default deadlines (20 s for a head, 60 s for a stalled send)."""
    deadlines: dict[str, object] = {"header_timeout": 20.0, "send_timeout": 60.0}
    return EdgeSite(resource, reactor=clock, **{**deadlines, **options})  # type: ignore[arg-type]


def connect(
    site: EdgeSite | ConnectionCaps, host: str = "127.0.0.1", port: int = 40000
) -> tuple[object, StringTransport]:
    address = IPv4Address("TCP", host, port)
    protocol = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def answer(transport: StringTransport) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON error of the one response written."""
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    return int(lines[0].split()[1]), headers, json.loads(body)["errors"][0]


@pytest.mark.parametrize("method, status", [(b"PUT", 405), (b"POST", 405), (b"PATCH", 405), (b"GET", 413)])
def test_a_declared_body_is_refused_before_it_is_read(resource: CountingResource, method: bytes, status: int) -> None:
    protocol, transport = connect(make_site(resource, Clock()))
    protocol.dataReceived(method + b" /v2/hello/blobs/uploads/ HTTP/1.1\r\nContent-Length: 1073741824\r\n\r\n")
    code, _, error = answer(transport)
    assert (code, error["code"]) == (status, "UNSUPPORTED")
    assert transport.disconnecting
    before = transport.value()
    protocol.dataReceived(b"x" * 1_000_000)
    assert transport.value() == before
    assert resource.rendered == 0
    assert protocol.requests[-1].content is None or protocol.requests[-1].content.tell() == 0


class BodyResource(CountingResource):
    """Counts requests and keeps the body each one carried."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request: object) -> bytes:
        self.bodies.append(request.content.read())  # type: ignore[attr-defined]
        return super().render(request)


def test_a_webhook_body_reaches_the_refresh_route_and_nothing_else_may_carry_one() -> None:
    resource = BodyResource()
    site = make_site(resource, Clock(), body_limit=body_limit)
    payload = b'{"ref":"refs/heads/main"}'
    protocol, transport = connect(site)
    protocol.dataReceived(b"POST /-/refresh/hello HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
    assert resource.bodies == [payload] and transport.value().startswith(b"HTTP/1.1 200")
    for target, length in ((b"/-/refresh", MAX_BODY + 1), (b"/v2/hello/manifests/latest", 1), (b"/-/refreshes", 1)):
        protocol, transport = connect(site, port=40001)
        protocol.dataReceived(b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (target, length))
        code, _, error = answer(transport)
        assert (code, error["code"]) == (405, "UNSUPPORTED"), target
    assert resource.rendered == 1


def test_chunked_bodies_are_refused_too(resource: CountingResource) -> None:
    protocol, transport = connect(make_site(resource, Clock()))
    protocol.dataReceived(b"DELETE /v2/x/manifests/y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    code, headers, _ = answer(transport)
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    assert resource.rendered == 0


def test_content_length_zero_however_written_is_served(resource: CountingResource) -> None:
    protocol, transport = connect(make_site(resource, Clock()))
    protocol.dataReceived(b"GET /v2/ HTTP/1.1\r\nContent-Length: " + b"0" * 6000 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert resource.rendered == 1


@pytest.mark.parametrize("value", [b"12a", b"-1", b"1, 2", b"\xd9\xa1"])
def test_a_malformed_content_length_is_a_json_400(resource: CountingResource, value: bytes) -> None:
    protocol, transport = connect(make_site(resource, Clock()))
    protocol.dataReceived(b"GET /v2/ HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n")
    assert answer(transport)[0] == 400
    assert resource.rendered == 0


def test_a_head_trickled_past_the_deadline_is_cut_off_with_408(resource: CountingResource) -> None:
    clock = Clock()
    protocol, transport = connect(make_site(resource, clock, header_timeout=20))
    for byte in GET_V2[:-1]:
        protocol.dataReceived(bytes([byte]))
        clock.advance(0.5)
        if transport.value():
            break
    code, _, error = answer(transport)
    assert code == 408 and error["code"] == "UNSUPPORTED"
    assert transport.disconnecting
    assert clock.seconds() == pytest.approx(20)
    assert resource.rendered == 0


def test_a_silent_connection_gets_408_after_the_deadline(resource: CountingResource) -> None:
    clock = Clock()
    _, transport = connect(make_site(resource, clock, header_timeout=5))
    clock.advance(4.9)
    assert transport.value() == b""
    clock.advance(0.2)
    assert answer(transport)[0] == 408


def test_the_deadline_restarts_with_each_request_on_a_kept_alive_connection(resource: CountingResource) -> None:
    clock = Clock()
    protocol, transport = connect(make_site(resource, clock, header_timeout=5))
    protocol.dataReceived(GET_V2)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    clock.advance(30)  # idle between requests: no deadline until the next request starts (Twisted's idle timeout)
    assert transport.value() == b""
    protocol.dataReceived(b"GET /v2/ HTTP/1.1\r\n")
    clock.advance(5)
    assert answer(transport)[0] == 408
    assert resource.rendered == 1


@pytest.mark.parametrize("request_bytes", [
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\n" + b"X-Many: a\r\n" * 2000 + b"\r\n",
    b"GET /v2/ HTTP/1.1\r\n" + (b"X-Some: " + b"a" * 1000 + b"\r\n") * 20 + b"\r\n",
])
def test_oversized_heads_get_a_json_431(resource: CountingResource, request_bytes: bytes) -> None:
    protocol, transport = connect(make_site(resource, Clock()))
    protocol.dataReceived(request_bytes)
    code, _, error = answer(transport)
    assert (code, error["code"]) == (431, "UNSUPPORTED")
    assert resource.rendered == 0


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n", b"GET /v2/ HTTP/9.9\r\n\r\n", b"GET /v2/\x00 HTTP/1.1\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nno colon here\r\n\r\n", b"GET /v2/ HTTP/1.1\r\nBad Name: x\r\n\r\n",
])
def test_malformed_heads_get_a_json_400(resource: CountingResource, request_bytes: bytes) -> None:
    protocol, transport = connect(make_site(resource, Clock()))
    protocol.dataReceived(request_bytes)
    assert answer(transport)[0] == 400
    assert transport.disconnecting
    assert resource.rendered == 0


def test_a_stalled_blob_is_dropped_after_the_send_timeout_and_its_file_closed(tmp_path: Path) -> None:
    clock = Clock()
    images = FakeImageService()
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (8 * 1024 * 1024))
    blob = images.add_blob_file("big", path, "sha256:" + "b" * 64)
    site = make_site(RegistryApi(images, clock).resource(), clock, send_timeout=60)
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /v2/big/blobs/sha256:" + b"b" * 64 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    protocol.pauseProducing()  # the transport's buffer is full: the client has stopped reading
    clock.advance(0)
    opened = images.opened[-1]
    assert 0 < opened.bytes_read < path.stat().st_size
    assert not opened.closed
    clock.advance(59)
    assert not transport.disconnected
    clock.advance(1)
    assert transport.disconnected  # aborted, not politely closed
    protocol.connectionLost(Failure(ConnectionAborted()))
    assert opened.closed
    assert blob is not None


def test_a_slow_reader_that_keeps_reading_is_not_dropped(resource: CountingResource) -> None:
    clock = Clock()
    protocol, transport = connect(make_site(resource, clock, send_timeout=10, header_timeout=1000))
    for _ in range(5):
        protocol.pauseProducing()
        clock.advance(9)
        protocol.resumeProducing()
    assert not transport.disconnected


def test_connections_are_capped_per_client_and_in_total(resource: CountingResource) -> None:
    site = ConnectionCaps(make_site(resource, Clock()), max_connections=3, max_client_connections=2)
    first, _ = connect(site, "127.0.0.2", 1)
    connect(site, "127.0.0.2", 2)
    _, refused = connect(site, "127.0.0.2", 3)
    code, headers, error = answer(refused)
    assert (code, error["code"], headers["Retry-After"]) == (503, "UNAVAILABLE", "1")
    assert refused.disconnecting
    fast, fast_transport = connect(site, "127.0.0.1", 4)
    fast.dataReceived(GET_V2)
    assert fast_transport.value().startswith(b"HTTP/1.1 200 ")
    _, over_total = connect(site, "127.0.0.3", 5)
    assert answer(over_total)[0] == 503
    first.connectionLost(Failure(ConnectionAborted()))
    assert site.open_by_client == {"127.0.0.2": 1, "127.0.0.1": 1}
    assert site.open_connections == 2
    again, again_transport = connect(site, "127.0.0.2", 6)
    again.dataReceived(GET_V2)
    assert again_transport.value().startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("method, status", [(b"OPTIONS", 405), (b"PUT", 405), (b"GET", 400), (b"HEAD", 400)])
def test_asterisk_targets_get_json(resource: CountingResource, method: bytes, status: int) -> None:
    protocol, transport = connect(make_site(resource, Clock()))
    protocol.dataReceived(method + b" * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer(transport)[0] == status
    assert resource.rendered == 0


def test_is_secure_follows_the_transport_and_is_looked_up_once(resource: CountingResource) -> None:
    from twisted.internet.interfaces import ISSLTransport
    from zope.interface import alsoProvides

    plain, _ = connect(make_site(resource, Clock()))
    assert plain.isSecure() is False and plain.isSecure() is False
    site = make_site(resource, Clock())
    secure = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    alsoProvides(transport, ISSLTransport)
    transport.setTcpNoDelay = lambda enabled: None  # type: ignore[attr-defined]  # an ITCPTransport method
    secure.makeConnection(transport)
    assert secure.isSecure() is True
    secure.dataReceived(GET_V2)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
