"""Stream a blob file to a request with a push producer paced by the transport; single byte ranges."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from nixforge.api.errors import HttpError
from nixforge.api.numbers import is_decimal, saturating_decimal

CHUNK_SIZE = 128 * 1024

log = Logger()


@frozen
class ByteRange:
    """A satisfiable byte range: `first` to `last` inclusive, of a representation of `size` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        """The number of bytes in the range."""
        return self.last - self.first + 1

    def content_range(self) -> str:
        """The `Content-Range` header value of a 206 response."""
        return f"bytes {self.first}-{self.last}/{self.size}"


def _unsatisfiable(size: int, header: str) -> HttpError:
    return HttpError(
        "RANGE_INVALID",
        "requested range not satisfiable",
        {"range": header[:200], "size": size},
        headers={"Content-Range": f"bytes */{size}"},
    )


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Return the one byte range asked for, or None to send everything.

    A missing, malformed, non-`bytes` or multi-range header is ignored (RFC 9110 allows it).
    A single range that cannot be satisfied raises HttpError RANGE_INVALID (416), which carries
    `Content-Range: bytes */<size>`. Offsets longer than 18 digits read as "beyond any blob": a first
    byte that large is unsatisfiable, a last byte that large means the end (RFC 9110 allows both).
    """
    if header is None:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not all(is_decimal(text) for text in (first_text or "0", last_text or "0")):
        return None
    if not first_text:
        if not last_text:
            return None
        suffix = saturating_decimal(last_text)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size, header)
        return ByteRange(max(0, size - suffix), size - 1, size)
    first = saturating_decimal(first_text)
    last = saturating_decimal(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise _unsatisfiable(size, header)
    return ByteRange(first, min(last, size - 1), size)


class BodySender:
    """What every blob sender shares: the route's Deferred, and how completion, a lost client or a
    file shorter than the headers promised end it. Subclasses say how to `_stop` (close the file).
    """

    def __init__(self, request: IRequest, file: BinaryIO) -> None:
        self._request = request
        self._file = file
        self._registered = False
        self._connection_gone = False
        self._stopped = False
        self._done: Deferred[None] = Deferred(lambda _: self._stop())

    @property
    def stopped(self) -> bool:
        """True once the sender has finished or been stopped and its file closed."""
        return self._stopped

    def _stop(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Stop, and fire the route's Deferred (once)."""
        self._stop()
        if not self._done.called:
            self._done.callback(None)

    def _abort(self) -> None:
        """Headers promised a length we cannot deliver: close everything and drop the connection."""
        self._stop()
        self._request.loseConnection()

    def _lost(self, reason: Failure) -> None:
        """The client disconnected: stop, and let the route's Deferred finish quietly."""
        self._connection_gone = True
        self._finish()


class PacedSender(BodySender):
    """A body sender that is a push producer: it writes while the transport takes more, and waits while it is full.

    Subclasses say how to go on (`_go`: write or read the next chunks); `start` registers it.
    """

    def __init__(self, request: IRequest, file: BinaryIO, length: int) -> None:
        super().__init__(request, file)
        self._remaining = length
        self._paused = False

    def start(self) -> Deferred[None]:
        """Register with the request and start; fires when the body is done or the client gone."""
        self._request.notifyFinish().addErrback(self._lost)
        if self._remaining <= 0:
            self._finish()
            return self._done
        self._registered = True
        self._request.registerProducer(self, True)
        self._go()
        return self._done

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop until it asks again."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport has room again: go on."""
        self._paused = False
        self._go()

    def stopProducing(self) -> None:
        """The consumer is going away: close the file and unregister (the Deferred fires on disconnect)."""
        self._stop()

    def _go(self) -> None:
        raise NotImplementedError


@implementer(IPushProducer)
class BlobProducer(PacedSender):
    """Write `length` bytes of `file` from `offset` to `request`, paced by the transport.

    A push producer: it writes chunks while the transport accepts them and stops as soon as the
    transport's buffer is full (`pauseProducing`), until the transport has sent it
    (`resumeProducing`). So memory stays at about one chunk plus the transport's buffer per client,
    whatever the blob size, and a slow client slows only its own stream. At most `chunks_per_turn`
    chunks are written before yielding to the reactor (through `schedule`), so even a consumer that
    never pauses cannot monopolise it. The file is closed when the body is complete, when the
    transport stops us, when the client goes away, or when the Deferred from `start` is cancelled.
    """

    def __init__(
        self,
        request: IRequest,
        file: BinaryIO,
        offset: int,
        length: int,
        schedule: Callable[[Callable[[], None]], object],
        chunk_size: int = CHUNK_SIZE,
        chunks_per_turn: int = 16,
    ) -> None:
        super().__init__(request, file, length)
        self._offset = offset
        self._schedule = schedule
        self._chunk_size = chunk_size
        self._chunks_per_turn = chunks_per_turn
        self._pumping = False
        self._scheduled = False

    def start(self) -> Deferred[None]:
        """Seek to the range, register with the request and start writing."""
        self._file.seek(self._offset)
        return super().start()

    def _go(self) -> None:
        self._pump()

    def _pump(self) -> None:
        """Write chunks until paused, stopped, done, or this turn's share is used up."""
        self._scheduled = False
        if self._pumping:
            return
        self._pumping = True
        try:
            for _ in range(self._chunks_per_turn):
                if self._paused or self._stopped:
                    return
                if not self._write_chunk():
                    return
        finally:
            self._pumping = False
        if not (self._paused or self._stopped or self._scheduled):
            self._scheduled = True
            self._schedule(self._pump)

    def _write_chunk(self) -> bool:
        """Read and write one chunk; False once the body is complete or the stream was aborted."""
        try:
            data = self._file.read(min(self._chunk_size, self._remaining))
        except OSError:
            log.failure("reading a blob failed; dropping the connection")
            self._abort()
            return False
        if not data:
            log.error("blob file ended {remaining} bytes early", remaining=self._remaining)
            self._abort()
            return False
        self._remaining -= len(data)
        self._request.write(data)
        if self._remaining <= 0:
            self._finish()
            return False
        return True

    def _stop(self) -> None:
        if self._registered:
            self._registered = False
            if not self._connection_gone:
                self._request.unregisterProducer()
        self._close()

    def _close(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._file.close()
