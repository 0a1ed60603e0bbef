"""Send a blob body past Twisted on plain-TCP connections: on a copy thread, else `os.sendfile` on writability."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from nixforge.api.access_log import note_body_pending
from nixforge.api.blob_sender import BlobProducer, BodySender
from nixforge.api.copy_threads import UNSUPPORTED, CopyResult, CopyThreads
from nixforge.api.twisted_compat import count_sent, transport_idle

# At most this many bytes per writable event. `sendfile` reads pages the cache lacks from the disk
# before it returns, on the reactor thread: a small slice bounds that wait (with a cold page cache,
# 16 downloads and 4 MiB slices held a manifest GET up to ~170 ms; 512 KiB, ~13 ms).
SEND_SLICE = 512 * 1024
# Ask the kernel to read this far ahead of what has been sent (asynchronous readahead), so that with
# a cold page cache `sendfile` finds the pages in memory instead of waiting for the disk.
READAHEAD = 8 * 1024 * 1024

log = Logger()


def plain_tcp_socket(request: IRequest) -> int | None:
    """The socket file descriptor of a request on a plain-TCP transport, or None (TLS, pipes, fakes).

    Wrappers that pass bytes unchanged (`passes_bytes_unchanged`, as the plain port's TLS-refusing
    wrapper) are looked through; TLS wraps the TCP transport in a protocol that encrypts
    (`TLSMemoryBIOProtocol`, no such mark), so behind TLS this is always None.
    """
    transport = tcp_transport(request)
    if transport is None:
        return None
    try:
        return int(transport.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def tcp_transport(request: IRequest) -> tcp.Server | None:
    """The plain `tcp.Server` under the request's channel, through byte-preserving wrappers only."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    while getattr(transport, "passes_bytes_unchanged", False):
        transport = getattr(transport, "transport", None)
    return transport if type(transport) is tcp.Server else None


def file_descriptor(file: BinaryIO) -> int | None:
    """The OS file descriptor behind `file`, or None for an in-memory file."""
    try:
        return int(file.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def send_blob(
    request: IRequest,
    file: BinaryIO,
    offset: int,
    length: int,
    reactor: Any,
    schedule: Callable[[Callable[[], None]], object],
) -> Deferred[None]:
    """Send `length` bytes of `file` from `offset` as the body; fires when done or the client is gone.

    `os.sendfile` when the request is on a plain TCP socket and the file is a real file and the
    reactor lets us watch a descriptor; else (TLS, in-memory files) the push producer. The Site's
    `blob_copier` (a CopyThreads), when it has one, copies the body on a thread of its own.
    """
    sock = plain_tcp_socket(request)
    source = file_descriptor(file)
    if sock is None or source is None or length <= 0 or not IReactorFDSet.providedBy(reactor):
        return BlobProducer(request, file, offset, length, schedule).start()
    site = getattr(request, "site", None)
    copier = getattr(site, "blob_copier", None)
    timeout = float(getattr(site, "send_timeout", 0) or 0)
    return SendfileSender(request, file, sock, offset, length, reactor, schedule, copier, timeout).start()


@implementer(IPushProducer, IWriteDescriptor)
class SendfileSender(BodySender):
    """Copy a file range to a TCP socket in the kernel (`os.sendfile`), only when the socket is writable.

    The headers go out through Twisted (`request.write(b"")`, a Content-Length response, so not
    chunked). Then this object watches a duplicate of the socket's descriptor for writability
    (`reactor.addWriter`; a `dup` so the transport's own registration stays untouched) and sends a
    slice on every writable event, never more than the socket takes (it is non-blocking): that is the
    backpressure. Between writable events the channel is told it is paused (`pauseProducing`, as a
    full transport would), which starts the edge's send timeout; progress resumes it. It is registered with
    the request as a push producer, so a lost connection stops it. The file and the duplicate
    descriptor are closed when the body is complete, when the client goes away, or when the Deferred
    from `start` is cancelled. If the kernel refuses `sendfile` before any byte was sent, the push
    producer takes over.

    With a `copier` (CopyThreads) that has a free thread, the first writable event after the head
    hands the whole body to a copy thread instead, which sends it with the socket blocking and a
    send timeout of `timeout` seconds; the descriptors stay open until it reports back, and a
    client that leaves meanwhile gets its socket shut down, which ends the thread's send at once.
    """

    def __init__(
        self,
        request: IRequest,
        file: BinaryIO,
        sock: int,
        offset: int,
        length: int,
        reactor: Any,
        schedule: Callable[[Callable[[], None]], object],
        copier: CopyThreads | None = None,
        timeout: float = 0.0,
    ) -> None:
        super().__init__(request, file)
        self._copier = copier
        self._timeout = timeout
        self._copying = False
        self._copy_counted: Deferred[None] = Deferred()
        self._source = file.fileno()
        self._socket = sock
        self._tcp = tcp_transport(request)
        self._offset = offset
        self._remaining = length
        self._reactor = reactor
        self._schedule = schedule
        self._fd = -1
        self._sent_any = False
        self._channel_paused = False
        self._readahead_to = offset

    def start(self) -> Deferred[None]:
        """Write the headers, then send the body as the socket drains; fires when done or the client is gone."""
        self._request.notifyFinish().addErrback(self._lost)
        if self._stopped:  # the client left before the body started
            return self._done
        self._request.registerProducer(self, True)
        self._registered = True
        self._request.write(b"")
        if self._stopped:
            return self._done
        self._fd = os.dup(self._socket)
        self._readahead()
        self._reactor.addWriter(self)
        return self._done

    # -- IWriteDescriptor (the reactor) -------------------------------------------------------

    def fileno(self) -> int:
        """The duplicate socket descriptor the reactor watches (-1 once closed)."""
        return self._fd

    def logPrefix(self) -> str:
        """Name in the reactor's log lines."""
        return "SendfileSender"

    def doWrite(self) -> None:
        """The socket is writable: send the next slice, or wait while Twisted still flushes the headers."""
        if self._stopped:
            return
        if not transport_idle(self._tcp):
            return
        if self._copier is not None:
            copier, self._copier = self._copier, None
            if copier.try_copy(self._fd, self._source, self._offset, self._remaining, self._timeout, self._copied):
                self._copying = True
                note_body_pending(self._request, self._copy_counted)
                self._reactor.removeWriter(self)
                return
        count = min(self._remaining, SEND_SLICE)
        try:
            sent = os.sendfile(self._fd, self._source, self._offset, count)
        except BlockingIOError:
            self._socket_full()
            return
        except OSError as error:
            if error.errno in UNSUPPORTED and not self._sent_any:
                self._fall_back()
            elif error.errno in (errno.EPIPE, errno.ECONNRESET):
                self._abort()
            else:
                log.failure("sendfile failed; dropping the connection", Failure())
                self._abort()
            return
        if sent == 0:
            log.error("blob file ended {remaining} bytes early", remaining=self._remaining)
            self._abort()
            return
        self._sent_any = True
        self._offset += sent
        self._remaining -= sent
        # Bytes written past Twisted count as written (the access log and the blob-bytes metric read it).
        count_sent(self._request, sent)
        self._progress()
        if self._remaining <= 0:
            self._finish()
            return
        self._readahead()
        # Until the next writable event the channel counts as paused (the socket may be full now, and
        # a full socket raises no event): a client that stops reading meets the edge's send timeout.
        self._socket_full()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped this descriptor (an error in doWrite): drop the client too."""
        if not self._stopped:
            self._abort()

    def _copied(self, result: CopyResult) -> None:
        """The copy thread is done (on the reactor thread): finish, or say why not."""
        self._copying = False
        self._offset += result.sent
        self._remaining -= result.sent
        count_sent(self._request, result.sent)
        self._copy_counted.callback(None)
        if self._stopped:  # the client went away meanwhile; the thread no longer uses the descriptors
            self._close_descriptors()
            return
        if result.stopped is None:
            self._finish()
        elif result.stopped == "unsupported":
            self._fall_back()
        elif result.stopped == "stalled":
            log.info("dropping {peer}: the response stalled for {timeout} s",
                     peer=str(self._tcp.getPeer()), timeout=self._timeout)
            self._stop()
            self._tcp.abortConnection()
        else:
            if result.stopped == "short":
                log.error("blob file ended {remaining} bytes early", remaining=self._remaining)
            elif result.stopped != "gone":
                log.error("copying a blob failed ({why}); dropping the connection", why=result.stopped)
            self._abort()

    # -- IPushProducer (the request) -----------------------------------------------------------

    def pauseProducing(self) -> None:
        """Nothing to do: this sender writes only when the socket is writable."""

    def resumeProducing(self) -> None:
        """Nothing to do: this sender writes only when the socket is writable."""

    def stopProducing(self) -> None:
        """The consumer is going away: close the file and stop watching the socket."""
        self._stop()

    # -- internals -------------------------------------------------------------------------------

    def _socket_full(self) -> None:
        """The socket's buffer is full: tell the channel (starts the edge's send timeout)."""
        if not self._channel_paused:
            self._channel_paused = True
            self._request.channel.pauseProducing()

    def _progress(self) -> None:
        if self._channel_paused:
            self._channel_paused = False
            self._request.channel.resumeProducing()

    def _readahead(self) -> None:
        """Keep the kernel's asynchronous readahead READAHEAD bytes ahead of what has been sent."""
        end = self._offset + self._remaining
        if self._readahead_to >= end or self._readahead_to - self._offset > READAHEAD // 2:
            return
        start = max(self._readahead_to, self._offset)
        stop = min(end, self._offset + READAHEAD)
        try:
            os.posix_fadvise(self._source, start, stop - start, os.POSIX_FADV_WILLNEED)
        except (AttributeError, OSError):
            pass
        self._readahead_to = stop

    def _fall_back(self) -> None:
        """The kernel cannot sendfile here: let the push producer send the whole body instead."""
        log.info("sendfile unsupported on this connection; using the blob producer")
        self._unwatch()
        if self._registered:
            self._registered = False
            self._request.unregisterProducer()
        producer = BlobProducer(self._request, self._file, self._offset, self._remaining, self._schedule)
        self._stopped = True  # the file now belongs to the producer
        producer.start().chainDeferred(self._done)

    def _unwatch(self) -> None:
        if self._fd >= 0 and not self._copying:
            self._reactor.removeWriter(self)
            os.close(self._fd)
            self._fd = -1

    def _wake_copy(self) -> None:
        """Stopped while a thread copies: shut the socket down so its blocked send returns at once."""
        sock = socket.socket(fileno=self._fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()

    def _close_descriptors(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._file.close()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._unwatch()
        if self._copying:
            self._wake_copy()
        if self._channel_paused and not self._connection_gone:
            self._channel_paused = False
            self._request.channel.resumeProducing()
        if self._registered:
            self._registered = False
            if not self._connection_gone:
                self._request.unregisterProducer()
        if not self._copying:  # else the thread still reads the file: closed when it reports back
            self._file.close()
