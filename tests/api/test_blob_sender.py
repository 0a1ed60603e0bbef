"""BlobProducer backpressure (paced by the transport) and cleanup with a fake request; parse_range."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from nixforge.api.blob_sender import BlobProducer, ByteRange, parse_range
from nixforge.api.errors import HttpError

from .fake_images import TrackedFile


class FakeRequest:
    """The consumer side of a Request that BlobProducer uses; pauses it once `window` bytes are buffered."""

    def __init__(self, window: int | None = None) -> None:
        self.written: list[bytes] = []
        self.window = window
        self.buffered = 0
        self.producer: object | None = None
        self.streaming: bool | None = None
        self.unregistered = 0
        self.lost_connection = False
        self.finish_notifications: list[Deferred[None]] = []

    def registerProducer(self, producer: object, streaming: bool) -> None:
        assert self.producer is None
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered += 1

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.buffered += len(data)
        if self.window is not None and self.buffered >= self.window and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> None:
        """The transport sent its buffer: resume the producer, as a real transport does."""
        self.buffered = 0
        if self.producer is not None:
            self.producer.resumeProducing()

    def notifyFinish(self) -> Deferred[None]:
        self.finish_notifications.append(Deferred())
        return self.finish_notifications[-1]

    def loseConnection(self) -> None:
        self.lost_connection = True

    def disconnect(self) -> None:
        for notification in self.finish_notifications:
            notification.errback(Failure(ConnectionLost()))


def make(data: bytes, offset: int = 0, length: int | None = None, chunk: int = 4, window: int | None = 8,
         per_turn: int = 16):
    request = FakeRequest(window)
    file = TrackedFile(io.BytesIO(data))
    scheduled: list[Callable[[], None]] = []
    producer = BlobProducer(request, file, offset, len(data) - offset if length is None else length,
                            scheduled.append, chunk_size=chunk, chunks_per_turn=per_turn)
    done = producer.start()
    fired: list[object] = []
    done.addBoth(fired.append)
    return request, file, producer, fired, scheduled


def test_registers_as_push_producer_and_writes_until_the_transport_is_full() -> None:
    request, file, producer, fired, scheduled = make(b"0123456789ab")
    assert request.producer is producer
    assert request.streaming is True
    assert request.written == [b"0123", b"4567"]
    assert file.reads == [4, 4]
    assert fired == [] and scheduled == []


def test_resumes_only_when_the_transport_drains() -> None:
    request, file, producer, fired, _ = make(b"0123456789ab")
    request.drain()
    assert request.written == [b"0123", b"4567", b"89ab"]
    assert file.closed
    assert request.producer is None
    assert fired == [None]
    producer.resumeProducing()
    assert file.reads == [4, 4, 4]


def test_a_consumer_that_never_pauses_still_lets_the_reactor_run() -> None:
    request, _file, _, fired, scheduled = make(b"0123456789", window=None, per_turn=2)
    assert request.written == [b"0123", b"4567"]
    assert len(scheduled) == 1 and fired == []
    scheduled.pop()()
    assert request.written == [b"0123", b"4567", b"89"]
    assert fired == [None] and scheduled == []


def test_range_reads_only_its_bytes() -> None:
    request, file, _producer, fired, _ = make(b"0123456789", offset=3, length=5)
    while not fired:
        request.drain()
    assert b"".join(request.written) == b"34567"
    assert file.bytes_read == 5
    assert file.closed


def test_stop_producing_closes_and_unregisters() -> None:
    request, file, producer, fired, _ = make(b"0123456789ab", window=4)
    producer.stopProducing()
    assert file.closed
    assert request.producer is None
    assert producer.stopped
    assert fired == []  # the route's Deferred fires once the connection is really gone
    request.disconnect()
    assert fired == [None]
    producer.resumeProducing()
    assert request.written == [b"0123"]
    assert request.unregistered == 1


def test_client_disconnect_closes_file() -> None:
    request, file, producer, fired, _ = make(b"0123456789ab", window=4)
    request.disconnect()
    assert file.closed
    assert fired == [None]
    assert request.unregistered == 0  # the channel is gone; nothing left to unregister from
    producer.resumeProducing()
    assert request.written == [b"0123"]


def test_cancel_closes_file() -> None:
    request = FakeRequest(window=4)
    file = TrackedFile(io.BytesIO(b"0123456789"))
    producer = BlobProducer(request, file, 0, 10, lambda call: None, chunk_size=4)
    done = producer.start()
    done.addErrback(lambda _: None)
    done.cancel()
    assert file.closed
    assert request.producer is None


def test_short_file_drops_the_connection() -> None:
    request, file, _producer, fired, _ = make(b"0123", length=10)
    assert request.lost_connection
    assert file.closed
    assert request.producer is None
    assert fired == []
    request.disconnect()
    assert fired == [None]


def test_empty_body_never_registers() -> None:
    request, file, _, fired, _ = make(b"", length=0)
    assert request.producer is None
    assert file.closed
    assert fired == [None]


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-9", 10, ByteRange(0, 9, 10)),
        ("bytes=2-4", 10, ByteRange(2, 4, 10)),
        ("bytes=5-", 10, ByteRange(5, 9, 10)),
        ("bytes=-3", 10, ByteRange(7, 9, 10)),
        ("bytes=-30", 10, ByteRange(0, 9, 10)),
        ("bytes=0-100", 10, ByteRange(0, 9, 10)),
        ("BYTES = 1-2", 10, ByteRange(1, 2, 10)),
        ("bytes=0-1,4-5", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=-", 10, None),
        ("bytes=1-2-3", 10, None),
        ("bytes=+1-2", 10, None),
        ("bytes=\u0661-2", 10, None),
        ("pages=1-2", 10, None),
        ("bytes", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)])
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(HttpError) as raised:
        parse_range(header, size)
    assert raised.value.response.status == 416
    assert raised.value.response.code == "RANGE_INVALID"
    assert raised.value.response.headers == {"Content-Range": f"bytes */{size}"}


def test_byte_range_headers() -> None:
    byte_range = ByteRange(2, 5, 10)
    assert byte_range.length == 4
    assert byte_range.content_range() == "bytes 2-5/10"
