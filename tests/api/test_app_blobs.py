"""Blob routes of RegistryApi: full GET, HEAD, conditional requests and byte ranges."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from nixforge.api import RegistryApi
from nixforge.api.blob_sender import CHUNK_SIZE

from .fake_images import FakeImageService, StubClient, TrackedFile

DATA = bytes(range(256)) * 3 + b"tail"  # 772 bytes
SIZE = len(DATA)


@pytest.fixture
def client(images: FakeImageService, clock: Clock) -> StubClient:
    return StubClient(RegistryApi(images, clock).resource(), clock)


@pytest.fixture
def digest(images: FakeImageService) -> str:
    return images.add_blob("lib/hello", DATA)


def header(response: object, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)  # type: ignore[attr-defined]
    return values[0] if values else None


def test_get_blob(client: StubClient, images: FakeImageService, digest: str) -> None:
    response, body = client.request("GET", f"/v2/lib/hello/blobs/{digest}")
    assert response.code == 200
    assert body == DATA
    assert response.length == SIZE
    assert header(response, "Content-Type") == "application/octet-stream"
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Accept-Ranges") == "bytes"
    assert header(response, "ETag") == f'"{digest}"'
    assert header(response, "Docker-Distribution-API-Version") == "registry/2.0"
    [opened] = images.opened
    assert opened.closed


def test_get_large_blob_reads_chunk_by_chunk(client: StubClient, images: FakeImageService) -> None:
    data = bytes(range(256)) * 1800  # 460800 bytes: three full chunks and a partial one
    digest = images.add_blob("big", data)
    _, body = client.request("GET", f"/v2/big/blobs/{digest}")
    assert body == data
    [opened] = images.opened
    assert opened.reads == [CHUNK_SIZE] * 3 + [len(data) - 3 * CHUNK_SIZE]
    assert opened.closed


def test_get_empty_blob(client: StubClient, images: FakeImageService) -> None:
    digest = images.add_blob("empty", b"")
    response, body = client.request("GET", f"/v2/empty/blobs/{digest}")
    assert response.code == 200
    assert body == b""
    assert response.length == 0
    assert all(opened.closed for opened in images.opened)


def test_head_blob_does_not_read(client: StubClient, images: FakeImageService, digest: str) -> None:
    response, body = client.request("HEAD", f"/v2/lib/hello/blobs/{digest}", {"Range": ["bytes=0-1"]})
    assert response.code == 200
    assert body == b""
    assert header(response, "Content-Length") == str(SIZE)
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Accept-Ranges") == "bytes"
    assert images.opened == []


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_blob_not_modified(client: StubClient, images: FakeImageService, digest: str, method: str) -> None:
    response, body = client.request(method, f"/v2/lib/hello/blobs/{digest}", {"If-None-Match": [f'"{digest}"']})
    assert response.code == 304
    assert body == b""
    assert images.opened == []


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=700-", 700, SIZE - 1),
        ("bytes=-4", SIZE - 4, SIZE - 1),
        ("bytes=-5000", 0, SIZE - 1),
        ("bytes=100-99999", 100, SIZE - 1),
        (f"bytes={SIZE - 1}-", SIZE - 1, SIZE - 1),
    ],
)
def test_range(
    client: StubClient, images: FakeImageService, digest: str, range_header: str, first: int, last: int
) -> None:
    response, body = client.request("GET", f"/v2/lib/hello/blobs/{digest}", {"Range": [range_header]})
    assert response.code == 206
    assert body == DATA[first : last + 1]
    assert response.length == last - first + 1
    assert header(response, "Content-Range") == f"bytes {first}-{last}/{SIZE}"
    assert header(response, "Docker-Content-Digest") == digest
    assert all(opened.closed for opened in images.opened)


@pytest.mark.parametrize("range_header", [f"bytes={SIZE}-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range(client: StubClient, images: FakeImageService, digest: str, range_header: str) -> None:
    response, body = client.request("GET", f"/v2/lib/hello/blobs/{digest}", {"Range": [range_header]})
    assert response.code == 416
    assert header(response, "Content-Range") == f"bytes */{SIZE}"
    assert header(response, "Content-Type") == "application/json"
    assert header(response, "Docker-Distribution-API-Version") == "registry/2.0"
    assert json.loads(body)["errors"][0]["code"] == "RANGE_INVALID"
    assert images.opened == []


@pytest.mark.parametrize("range_header", ["bytes=0-1,5-9", "bytes=9-2", "bytes=abc", "items=0-1", "bytes=", "bytes=-"])
def test_ignored_range_sends_everything(
    client: StubClient, images: FakeImageService, digest: str, range_header: str
) -> None:
    response, body = client.request("GET", f"/v2/lib/hello/blobs/{digest}", {"Range": [range_header]})
    assert response.code == 200
    assert body == DATA
    assert header(response, "Content-Range") is None


def test_blob_of_another_repository_is_unknown(client: StubClient, images: FakeImageService, digest: str) -> None:
    images.repos.add("other")
    response, body = client.request("GET", f"/v2/other/blobs/{digest}")
    assert response.code == 404
    assert json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert header(response, "Docker-Content-Digest") is None


def test_a_blob_get_redirects_to_the_store_url_after_the_checks(images: FakeImageService, clock: Clock,
                                                                digest: str) -> None:
    asked: list[str] = []

    def url(blob_digest: str) -> str:
        asked.append(blob_digest)
        return f"http://store.example/bucket/{blob_digest}?X-Amz-Signature=secret"

    client = StubClient(RegistryApi(images, clock, blob_url=url).resource(), clock)
    response = client.wait(client.stub.request("GET", f"http://registry.test/v2/lib/hello/blobs/{digest}",
                                               allow_redirects=False))
    body = client.wait(client.stub.content(response))
    assert response.code == 307 and body == b""
    assert header(response, "Location") == f"http://store.example/bucket/{digest}?X-Amz-Signature=secret"
    assert header(response, "Docker-Content-Digest") == digest
    assert images.opened == []  # no byte passed through the registry
    head, _ = client.request("HEAD", f"/v2/lib/hello/blobs/{digest}")
    assert head.code == 200 and header(head, "Content-Length") == str(SIZE) and header(head, "Location") is None
    unknown, _ = client.request("GET", "/v2/lib/hello/blobs/sha256:" + "0" * 64)
    assert unknown.code == 404 and header(unknown, "Location") is None
    assert asked == [digest]


class BlobThread:
    """A thread runner for the API's blob I/O that runs at once and records what it was given."""

    def __init__(self) -> None:
        self.ran: list[object] = []

    def __call__(self, function: Any, *args: Any) -> Deferred[Any]:
        self.ran.append(function)
        return succeed(function(*args))


def test_a_blob_store_that_fetches_is_opened_through_the_given_thread_runner(
        images: FakeImageService, clock: Clock, digest: str) -> None:
    blob_thread = BlobThread()
    client = StubClient(RegistryApi(images, clock, blob_thread=blob_thread).resource(), clock)
    response, body = client.request("GET", f"/v2/lib/hello/blobs/{digest}", headers={"Range": ["bytes=2-5"]})
    assert response.code == 206 and body == DATA[2:6]
    assert len(blob_thread.ran) == 1 and len(images.opened) == 1 and images.opened[0].closed


def test_a_store_across_the_network_sends_the_range_it_reads_straight_from_the_store(
        images: FakeImageService, clock: Clock, digest: str) -> None:
    asked: list[tuple[int, int]] = []
    readers: list[TrackedFile] = []

    def ranged(offset: int, length: int) -> TrackedFile:
        asked.append((offset, length))
        readers.append(TrackedFile(io.BytesIO(DATA[offset:offset + length])))
        return readers[-1]

    images.blobs[("lib/hello", digest)] = evolve(images.blobs[("lib/hello", digest)], ranged=ranged)
    blob_thread = BlobThread()
    client = StubClient(RegistryApi(images, clock, blob_thread=blob_thread).resource(), clock)
    response, body = client.request("GET", f"/v2/lib/hello/blobs/{digest}", headers={"Range": ["bytes=100-299"]})
    assert response.code == 206 and body == DATA[100:300]
    assert asked == [(100, 200)] and images.opened == []  # no local copy of the whole blob
    assert readers[0].closed and readers[0].bytes_read == 200
    assert blob_thread.ran[0] is ranged and len(blob_thread.ran) >= 2  # the ranged GET, then the reads
    response, body = client.request("GET", f"/v2/lib/hello/blobs/{digest}")
    assert response.code == 200 and body == DATA and asked[-1] == (0, SIZE)
