"""The sendfile path behind a real Site on 127.0.0.1: exact bytes, Range, HEAD, keep-alive, disconnects,
a blob unlinked mid-stream, the edge's send timeout, TLS and unsupported sendfile falling back.

Each runs three ways: sendfile on the reactor thread, and on a copy thread in each of its modes."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.server import Site

from nixforge.api import RegistryApi
from nixforge.api import sendfile as sendfile_module
from nixforge.api.connection_caps import ConnectionCaps
from nixforge.api.copy_threads import CopyThreads
from nixforge.api.edge import EdgeSite
from nixforge.api.plain_http import RefuseTLSFactory
from nixforge.images.interfaces import BlobFile

from .fake_images import FakeImageService
from .recording_site import RecordingSite

BIG = 24 * 1024 * 1024 + 12345
DIGEST = "sha256:" + "c" * 64
PATH = f"/v2/big/blobs/{DIGEST}"


class CountingFile(io.FileIO):
    """A real file (it has a descriptor, so sendfile can use it) that counts userspace reads and its close."""

    def __init__(self, path: Path, on_close: Callable[[], None]) -> None:
        super().__init__(path, "rb")
        self.read_calls = 0
        self._on_close = on_close

    def read(self, size: int = -1) -> bytes:
        self.read_calls += 1
        return super().read(size)

    def readinto(self, buffer: Any) -> int | None:
        self.read_calls += 1
        return super().readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._on_close()


class Blob:
    """A random blob on disk served by the fake image service; records the files opened on it."""

    def __init__(self, path: Path, images: FakeImageService) -> None:
        self.path = path
        self.data = os.urandom(BIG)
        path.write_bytes(self.data)
        self.opened: list[CountingFile] = []
        self.closed: Deferred[None] = Deferred()
        images.blobs[("big", DIGEST)] = BlobFile(DIGEST, BIG, self.open)
        images.repos.add("big")

    def open(self) -> CountingFile:
        file = CountingFile(self.path, lambda: reactor.callLater(0, self._closed))
        self.opened.append(file)
        return file  # type: ignore[return-value]

    def _closed(self) -> None:
        if not self.closed.called:
            self.closed.callback(None)


class Client(Protocol):
    """Send raw request bytes and collect the response; hooks on bytes received."""

    def __init__(self, request: bytes, on_data: Callable[[Client], None] | None = None) -> None:
        self.request = request
        self.on_data = on_data
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.on_data is not None:
            self.on_data(self)

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(bytes(self.received))


@pytest.fixture
def blob(tmp_path: Path, images: FakeImageService) -> Blob:
    return Blob(tmp_path / "big.blob", images)


@pytest.fixture(params=["reactor", "read", "sendfile"])
def copier(request: pytest.FixtureRequest) -> CopyThreads | None:
    """No copy threads (sendfile on the reactor thread), or copy threads in "read" or "sendfile" mode."""
    if request.param == "reactor":
        return None
    return CopyThreads(reactor.callFromThread, max_threads=4, mode=request.param)


@pytest.fixture
def site(images: FakeImageService, copier: CopyThreads | None):
    site = RecordingSite(RegistryApi(images, reactor).resource())
    site.blob_copier = copier
    # As `twistd nixforge` listens without TLS: the Site behind the TLS-refusing wrapper.
    port = reactor.listenTCP(0, RefuseTLSFactory(site), interface="127.0.0.1")
    site.port_number = port.getHost().port
    yield site
    port.stopListening()


def request_bytes(method: str, path: str = PATH, extra: str = "", close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}{extra}\r\n".encode()


async def exchange(port: int, request: bytes, on_data: Callable[[Client], None] | None = None) -> bytes:
    client = Client(request, on_data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return await client.done.addTimeout(60, reactor)


def split(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.ensureDeferred
async def test_get_sends_the_whole_blob_byte_exact_without_userspace_reads(
    site: RecordingSite, blob: Blob, failures: list[dict], copier: CopyThreads | None
) -> None:
    status, headers, body = split(await exchange(site.port_number, request_bytes("GET")))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == str(BIG)
    assert "transfer-encoding" not in headers
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(blob.data).hexdigest()
    await blob.closed.addTimeout(10, reactor)
    [file] = blob.opened
    assert file.read_calls == 0  # sendfile, or pread on the descriptor: never the file object
    assert copier is None or (copier.started, copier.active) == (1, 0)
    [request] = site.requests
    assert request.sentLength >= BIG  # the access log and the blob-bytes metric read it
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_range_sends_exactly_the_requested_bytes(site: RecordingSite, blob: Blob) -> None:
    first, last = 5_000_001, 17_654_320
    data = await exchange(site.port_number, request_bytes("GET", extra=f"Range: bytes={first}-{last}\r\n"))
    status, headers, body = split(data)
    assert status == "HTTP/1.1 206 Partial Content"
    assert headers["content-range"] == f"bytes {first}-{last}/{BIG}"
    assert headers["content-length"] == str(last - first + 1)
    assert body == blob.data[first:last + 1]
    assert blob.opened[0].read_calls == 0


@pytest_twisted.ensureDeferred
async def test_suffix_range_at_the_end(site: RecordingSite, blob: Blob) -> None:
    data = await exchange(site.port_number, request_bytes("GET", extra="Range: bytes=-1000\r\n"))
    status, _, body = split(data)
    assert status == "HTTP/1.1 206 Partial Content"
    assert body == blob.data[-1000:]


@pytest_twisted.ensureDeferred
async def test_head_sends_no_body_and_opens_nothing(site: RecordingSite, blob: Blob) -> None:
    status, headers, body = split(await exchange(site.port_number, request_bytes("HEAD")))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == str(BIG)
    assert body == b""
    assert blob.opened == []


@pytest_twisted.ensureDeferred
async def test_keep_alive_answers_the_next_request_after_the_body(site: RecordingSite, blob: Blob) -> None:
    requests = request_bytes("GET", extra="Range: bytes=0-99999\r\n", close=False) + request_bytes("GET")
    data = await exchange(site.port_number, requests)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206")
    assert rest[:100_000] == blob.data[:100_000]
    status, _, body = split(rest[100_000:])
    assert status == "HTTP/1.1 200 OK"
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob.data).digest()


@pytest_twisted.ensureDeferred
async def test_client_disconnect_mid_blob_closes_file_and_socket_copy(
    site: RecordingSite, blob: Blob, failures: list[dict]
) -> None:
    before = open_descriptors()

    def abort(client: Client) -> None:
        if len(client.received) >= 100_000:
            client.on_data = None
            client.transport.abortConnection()

    data = await exchange(site.port_number, request_bytes("GET"), abort)
    assert len(data) < BIG
    await blob.closed.addTimeout(10, reactor)
    assert blob.opened[0].closed
    [request] = site.requests
    assert request.producer is None
    assert open_descriptors() <= before  # neither the file nor the duplicate socket descriptor leaked
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_a_blob_unlinked_while_it_streams_is_still_sent_whole(site: RecordingSite, blob: Blob) -> None:
    seen: list[bool] = []

    def unlink_mid_stream(client: Client) -> None:
        if len(client.received) >= 200_000:
            client.on_data = None
            client.transport.pauseProducing()
            seen.append(blob.opened[0].closed)  # still streaming when GC removes the file
            blob.path.unlink()
            reactor.callLater(0.05, client.transport.resumeProducing)

    _, _, body = split(await exchange(site.port_number, request_bytes("GET"), unlink_mid_stream))
    assert seen == [False]
    assert not blob.path.exists()
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob.data).digest()


@pytest_twisted.ensureDeferred
async def test_the_send_timeout_drops_a_client_that_stops_reading(
    images: FakeImageService, blob: Blob, copier: CopyThreads | None
) -> None:
    edge = ConnectionCaps(EdgeSite(RegistryApi(images, reactor).resource(), header_timeout=20, send_timeout=0.3,
                                    blob_copier=copier))
    port = reactor.listenTCP(0, edge, interface="127.0.0.1")
    try:
        def stall(client: Client) -> None:
            client.on_data = None
            client.transport.pauseProducing()

        client = Client(request_bytes("GET"), stall)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        # The server gives up on the stalled client: the file is closed without the client reading on.
        await blob.closed.addTimeout(30, reactor)
        assert blob.opened[0].closed
        client.transport.resumeProducing()
        data = await client.done.addTimeout(30, reactor)
        assert len(data) < BIG
        assert edge.open_connections == 0
        assert copier is None or copier.active == 0
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_unsupported_sendfile_falls_back_to_the_producer(
    site: RecordingSite, blob: Blob, monkeypatch: pytest.MonkeyPatch, failures: list[dict],
    copier: CopyThreads | None,
) -> None:
    def refuse(*args: object) -> int:
        raise OSError(errno.EINVAL, "sendfile not supported here")

    monkeypatch.setattr(sendfile_module.os, "sendfile", refuse)
    status, _, body = split(await exchange(site.port_number, request_bytes("GET")))
    assert status == "HTTP/1.1 200 OK"
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob.data).digest()
    # "read" mode never calls sendfile: pread and write on the thread, no reads through the file object.
    assert (blob.opened[0].read_calls > 0) == (copier is None or copier.mode == "sendfile")
    assert failures == []


@pytest.fixture
def tls_port(tmp_path: Path, images: FakeImageService):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    endpoint = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    port = pytest_twisted.blockon(endpoint.listen(Site(RegistryApi(images, reactor).resource())))
    yield port.getHost().port
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_uses_the_producer_and_sends_the_whole_blob(tls_port: int, blob: Blob) -> None:
    client = Client(request_bytes("GET"))
    await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", tls_port, ssl.CertificateOptions()), client)
    status, _, body = split(await client.done.addTimeout(60, reactor))
    assert status == "HTTP/1.1 200 OK"
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob.data).digest()
    assert blob.opened[0].read_calls > 0  # read in userspace, encrypted by TLS: not sendfile
