"""StreamSender: reads in worker threads one at a time, paced by the transport; the reader always closed."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from nixforge.api.stream_sender import StreamSender

from .fake_images import TrackedFile
from .test_blob_sender import FakeRequest


class Worker:
    """A thread runner whose calls wait until the test lets them run (`run_next`), as a busy pool would."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, function: Any, *args: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.pending.append((function, args, done))
        return done

    def run_next(self) -> None:
        function, args, done = self.pending.pop(0)
        try:
            result = function(*args)
        except Exception as error:
            done.errback(error)
        else:
            done.callback(result)


def make(data: bytes, length: int | None = None, window: int | None = 8, chunk: int = 4):
    request, worker = FakeRequest(window), Worker()
    reader = TrackedFile(io.BytesIO(data))
    sender = StreamSender(request, reader, len(data) if length is None else length, worker, chunk_size=chunk)
    fired: list[object] = []
    sender.start().addBoth(fired.append)
    return request, worker, reader, sender, fired


def test_one_read_at_a_time_in_the_worker_and_none_while_the_transport_is_full() -> None:
    request, worker, reader, sender, fired = make(b"0123456789ab")
    assert request.producer is sender and request.streaming is True
    assert len(worker.pending) == 1 and reader.reads == []  # nothing read on the reactor
    worker.run_next()
    assert request.written == [b"0123"] and len(worker.pending) == 1
    worker.run_next()
    assert request.written == [b"0123", b"4567"] and worker.pending == []  # paused: the window is full
    request.drain()
    worker.run_next()
    assert request.written == [b"0123", b"4567", b"89ab"] and fired == [None]
    assert reader.closed and request.producer is None and worker.pending == []


def test_a_client_gone_mid_read_closes_the_reader_once_the_read_returns() -> None:
    request, worker, reader, _sender, fired = make(b"0123456789ab")
    request.disconnect()
    assert fired == [None] and not reader.closed  # a read is still in flight in its thread
    worker.run_next()
    assert reader.closed and request.written == [] and worker.pending == []


def test_a_stream_shorter_than_promised_drops_the_connection() -> None:
    request, worker, reader, _sender, fired = make(b"0123", length=8, window=None)
    worker.run_next()
    worker.run_next()
    assert request.written == [b"0123"] and request.lost_connection and reader.closed and fired == []


class BrokenStream(TrackedFile):
    def read(self, size: int = -1) -> bytes:
        raise OSError("connection reset by the store")


def test_a_read_that_fails_drops_the_connection_and_closes() -> None:
    request, worker = FakeRequest(8), Worker()
    reader = BrokenStream(io.BytesIO(b"0123456789ab"))
    fired: list[object] = []
    StreamSender(request, reader, 12, worker, chunk_size=4).start().addBoth(fired.append)
    worker.run_next()
    assert request.lost_connection and reader.closed and request.written == [] and fired == []


def test_cancelling_stops_reading() -> None:
    request, worker, reader, sender, fired = make(b"0123456789ab", window=None)
    worker.run_next()
    sender._done.cancel()  # what cancelling the route's Deferred does
    assert len(fired) == 1 and isinstance(fired[0], Failure) and fired[0].check(CancelledError)
    worker.run_next()
    assert reader.closed and worker.pending == [] and request.producer is None
    assert request.written == [b"0123"]


def test_an_empty_range_sends_nothing_and_closes() -> None:
    request, worker, reader, _sender, fired = make(b"", length=0)
    assert fired == [None] and reader.closed and worker.pending == [] and request.written == []
