"""Send a body read from a network stream (an object store's response) in worker threads, paced by the transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from nixforge.api.blob_sender import CHUNK_SIZE, PacedSender

log = Logger()

STREAM_CHUNK = 4 * CHUNK_SIZE
"""Bytes per read from the store: each read is a trip to a worker thread, so larger than a local file's."""


@implementer(IPushProducer)
class StreamSender(PacedSender):
    """Write `length` bytes of `reader` to `request`; every read runs in a worker thread (`run_in_thread`).

    A read from the network may wait, so none runs on the reactor. One read is in flight at a time;
    its chunk is written on the reactor, and the next read starts only while the transport takes
    more (`pauseProducing` holds it, `resumeProducing` goes on). So a client gets its first bytes
    as soon as the store sends them, memory stays at about one chunk plus the transport's buffer per
    client, and a slow client slows only its own stream (and its store connection). The reader is
    closed when the body is complete, when the client goes away, or when the Deferred from `start`
    is cancelled; a read in flight then finishes first.
    """

    def __init__(self, request: IRequest, reader: BinaryIO, length: int,
                 run_in_thread: Callable[..., Deferred[Any]], chunk_size: int = STREAM_CHUNK) -> None:
        super().__init__(request, reader, length)
        self._run_in_thread = run_in_thread
        self._chunk_size = chunk_size
        self._reading = False
        self._closed = False

    def _go(self) -> None:
        self._read_next()

    def _read_next(self) -> None:
        if self._reading or self._paused or self._stopped:
            return
        self._reading = True
        reading = self._run_in_thread(self._file.read, min(self._chunk_size, self._remaining))
        reading.addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            self._close()
            return
        if not data:
            log.error("the store's stream ended {remaining} bytes early; dropping the connection",
                      remaining=self._remaining)
            self._abort()
            return
        self._remaining -= len(data)
        self._request.write(data)
        if self._remaining <= 0:
            self._finish()
        else:
            self._read_next()

    def _failed(self, reason: Failure) -> None:
        self._reading = False
        if self._stopped:
            self._close()
            return
        log.warn("reading a blob from the store failed ({error}); dropping the connection",
                 error=reason.getErrorMessage())
        self._abort()

    def _stop(self) -> None:
        if self._registered:
            self._registered = False
            if not self._connection_gone:
                self._request.unregisterProducer()
        self._stopped = True
        if not self._reading:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._file.close()
            except Exception as error:  # a stream that broke while closing: nothing more to send anyway
                log.debug("closing a store stream: {error}", error=error)
