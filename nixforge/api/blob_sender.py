"""Stream a blob file to a request with a pull producer; single byte ranges (RFC 9110 `Range`)."""

from __future__ import annotations

from typing import BinaryIO

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from nixforge.api.errors import HttpError

CHUNK_SIZE = 64 * 1024

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
    `Content-Range: bytes */<size>`.
    """
    if header is None:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not all(text.isascii() and text.isdigit() for text in (first_text or "0", last_text or "0")):
        return None
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size, header)
        return ByteRange(max(0, size - suffix), size - 1, size)
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise _unsatisfiable(size, header)
    return ByteRange(first, min(last, size - 1), size)


@implementer(IPullProducer)
class BlobProducer:
    """Write `length` bytes of `file` from `offset` to `request`, one chunk per resumeProducing.

    The file is read only when the transport asks for more, so memory stays flat whatever the
    blob size. The file is closed when the body is complete, when the transport stops us, when the
    client goes away, or when the Deferred from `start` is cancelled.
    """

    def __init__(
        self,
        request: IRequest,
        file: BinaryIO,
        offset: int,
        length: int,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._request = request
        self._file = file
        self._offset = offset
        self._remaining = length
        self._chunk_size = chunk_size
        self._registered = False
        self._connection_gone = False
        self._stopped = False
        self._done: Deferred[None] = Deferred(lambda _: self._stop())

    @property
    def stopped(self) -> bool:
        """True once the producer has finished or been stopped and its file closed."""
        return self._stopped

    def start(self) -> Deferred[None]:
        """Register with the request; the result fires when the body is done or the client is gone."""
        self._file.seek(self._offset)
        self._request.notifyFinish().addErrback(self._lost)
        if self._remaining <= 0:
            self._close()
            self._done.callback(None)
            return self._done
        self._registered = True
        self._request.registerProducer(self, False)
        return self._done

    def resumeProducing(self) -> None:
        """Read and write one chunk; on the last one, unregister and fire the Deferred."""
        if self._stopped:
            return
        try:
            data = self._file.read(min(self._chunk_size, self._remaining))
        except OSError:
            log.failure("reading a blob failed; dropping the connection")
            self._abort()
            return
        if not data:
            log.error("blob file ended {remaining} bytes early", remaining=self._remaining)
            self._abort()
            return
        self._remaining -= len(data)
        self._request.write(data)
        if self._remaining <= 0:
            self._stop()
            self._done.callback(None)

    def stopProducing(self) -> None:
        """The consumer is going away: close the file and unregister (the Deferred fires on disconnect)."""
        self._stop()

    def _abort(self) -> None:
        """Headers promised a length we cannot deliver: close everything and drop the connection."""
        self._stop()
        self._request.loseConnection()

    def _lost(self, reason: Failure) -> None:
        """The client disconnected: stop, and let the route's Deferred finish quietly."""
        self._connection_gone = True
        self._stop()
        if not self._done.called:
            self._done.callback(None)

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
