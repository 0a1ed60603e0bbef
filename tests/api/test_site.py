"""RegistryApi behind a real Site on 127.0.0.1: HEAD lengths, full streaming, and client disconnects."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from nixforge.api import RegistryApi
from nixforge.api.blob_sender import CHUNK_SIZE

from .fake_images import FakeImageService, TrackedFile
from .recording_site import RecordingSite

BIG = 20 * 1024 * 1024
BIG_DIGEST = "sha256:" + "b" * 64


class RawClient(Protocol):
    """Send raw request bytes; collect the response; optionally abort after `abort_after` bytes."""

    def __init__(self, request: bytes, abort_after: int | None = None) -> None:
        self.request = request
        self.abort_after = abort_after
        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.abort_after is not None and len(self.received) >= self.abort_after:
            self.abort_after = None
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(bytes(self.received))


@pytest.fixture
def images(tmp_path: Path) -> FakeImageService:
    images = FakeImageService()
    path = tmp_path / "big.blob"
    with path.open("wb") as file:
        chunk = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(BIG // len(chunk)):
            file.write(chunk)
    images.add_blob_file("big", path, BIG_DIGEST)
    images.add_image("hello", "latest")
    return images


@pytest.fixture
def site(images: FakeImageService):
    site = RecordingSite(RegistryApi(images, reactor).resource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    site.port_number = port.getHost().port
    yield site
    port.stopListening()


async def exchange(site: RecordingSite, request: bytes, abort_after: int | None = None) -> tuple[RawClient, bytes]:
    client = RawClient(request, abort_after)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", site.port_number), client)
    data = await client.closed.addTimeout(30, reactor)
    return client, data


def split_response(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


def http_request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


@pytest_twisted.ensureDeferred
async def test_head_blob_reports_the_real_length(site: RecordingSite, images: FakeImageService) -> None:
    _, data = await exchange(site, http_request("HEAD", f"/v2/big/blobs/{BIG_DIGEST}"))
    status, headers, body = split_response(data)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == str(BIG)
    assert headers["docker-content-digest"] == BIG_DIGEST
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert "transfer-encoding" not in headers
    assert body == b""
    assert images.opened == []


@pytest_twisted.ensureDeferred
async def test_head_manifest_reports_the_real_length(site: RecordingSite, images: FakeImageService) -> None:
    manifests = images.images[("hello", "latest")]
    _, data = await exchange(site, http_request("HEAD", "/v2/hello/manifests/latest"))
    status, headers, body = split_response(data)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == str(len(manifests.oci.body))
    assert headers["docker-content-digest"] == manifests.oci.digest
    assert body == b""


@pytest_twisted.ensureDeferred
async def test_get_big_blob_streams_it_all(site: RecordingSite, images: FakeImageService, failures: list[dict]) -> None:
    _, data = await exchange(site, http_request("GET", f"/v2/big/blobs/{BIG_DIGEST}"))
    status, headers, body = split_response(data)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == str(BIG)
    assert len(body) == BIG
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(bytes(range(256)) * (BIG // 256)).hexdigest()
    [opened] = images.opened
    assert opened.closed
    assert max(opened.reads) == CHUNK_SIZE
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_client_disconnect_mid_blob_closes_the_file(
    site: RecordingSite, images: FakeImageService, failures: list[dict]
) -> None:
    file_closed: Deferred[None] = Deferred()
    original_track = images._track

    def track(inner):  # type: ignore[no-untyped-def]
        tracked: TrackedFile = original_track(inner)  # type: ignore[assignment]
        tracked.on_close.append(lambda: reactor.callLater(0, file_closed.callback, None))
        return tracked

    images._track = track  # type: ignore[method-assign]
    _, data = await exchange(site, http_request("GET", f"/v2/big/blobs/{BIG_DIGEST}"), abort_after=100_000)
    assert len(data) < BIG
    await file_closed.addTimeout(10, reactor)
    [opened] = images.opened
    assert opened.closed
    assert opened.bytes_read < BIG
    [request] = site.requests
    assert request.producer is None
    assert failures == []


class StalledClient(Protocol):
    """Send a request, then stop reading: the server must stop reading the blob too."""

    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        self.transport.pauseProducing()


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_stops_the_blob_reads(
    site: RecordingSite, images: FakeImageService
) -> None:
    client = StalledClient(http_request("GET", f"/v2/big/blobs/{BIG_DIGEST}"))
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", site.port_number), client)
    try:
        for _ in range(100):
            if images.opened:
                break
            await deferLater(reactor, 0.01, lambda: None)
        [opened] = images.opened
        await deferLater(reactor, 0.5, lambda: None)
        stalled_at = opened.bytes_read
        await deferLater(reactor, 0.5, lambda: None)
        # Only what the kernel's socket buffers hold has been read, and reading has stopped.
        assert stalled_at < BIG // 2
        assert opened.bytes_read == stalled_at
        assert not opened.closed
    finally:
        client.transport.abortConnection()
