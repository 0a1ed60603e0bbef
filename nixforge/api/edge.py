"""The HTTP edge: a Site whose channels bound what one client may hold, and answer every refusal in JSON.

Below the resources, where Twisted's HTTPChannel reads bytes:
- a request that announces a body (Content-Length > 0, any Transfer-Encoding) is refused as soon as
  that header arrives, before one byte of body is read: 405 for writes, 413 otherwise; only the
  requests `body_limit(method, target)` names may carry a body, of at most that many bytes;
- a request head must be complete `header_timeout` seconds after connecting, or after its first
  byte on a kept-alive connection: else 408, and the connection is closed;
- an over-long request line or header block gets 431, a malformed one 400, both as OCI JSON (Twisted
  itself closes silently or answers a bare 400);
- a response the client stops reading (the transport stays paused) is dropped after `send_timeout`
  seconds; dropping the connection stops the blob producer, which closes its file.
Connections are capped by nixforge.api.connection_caps, a wrapper around this Site. The limits are
counted here, not read from Twisted's own counters; Twisted's limits are the same numbers, so they
never fire first (tests/api/test_edge.py would see a bare 400 if they did). The one private hook,
Twisted's bare-400 answer, is overridden through nixforge.api.twisted_compat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource
from twisted.web.server import Site

from nixforge.api.copy_threads import CopyThreads
from nixforge.api.errors import API_VERSION, API_VERSION_HEADER, ErrorResponse, HttpError
from nixforge.api.numbers import is_decimal, saturating_decimal
from nixforge.api.twisted_compat import BadRequestHook

log = Logger()

_READ_METHODS = (b"GET", b"HEAD")
_MAX_HEAD = 16 * 1024
_REASONS = {**RESPONSES, 431: b"Request Header Fields Too Large"}


def raw_error(response: ErrorResponse) -> bytes:
    """A whole HTTP/1.1 error response (status line, headers, JSON body) that closes the connection."""
    body = response.body()
    lines = [
        b"HTTP/1.1 %d %s" % (response.status, _REASONS.get(response.status, b"Error")),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        API_VERSION_HEADER + b": " + API_VERSION,
        b"Connection: close",
        *(f"{name}: {value}".encode("latin-1") for name, value in response.headers.items()),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class EdgeChannel(BadRequestHook):
    """An HTTPChannel with deadlines, no request bodies, and JSON answers for what it refuses."""

    MAX_LENGTH = _MAX_HEAD
    totalHeadersSize = _MAX_HEAD
    maxHeaders = 100
    header_timeout = 0.0  # both set by the EdgeSite that builds the channel (0: no deadline)
    send_timeout = 0.0

    _refused = False
    _head_started = False
    _head_call: IDelayedCall | None = None
    _send_call: IDelayedCall | None = None
    _method: bytes = b""
    _target: bytes = b""
    _head_bytes = 0
    _head_fields = 0
    body_limit: Callable[[bytes, bytes], int] = staticmethod(lambda method, target: 0)

    _secure: bool | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_head_deadline()

    def isSecure(self) -> bool:
        """Whether the connection is TLS, looked up once: the transport stays the same, and the lookup
        (an interface adaptation through the wrappers) costs about 9 µs, twice a request."""
        if self._secure is None:
            self._secure = super().isSecure()
        return self._secure

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._head_started and data:
            self._start_head_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        self._head_bytes += len(line)
        if self._head_bytes > self.totalHeadersSize:
            self._refuse(HttpError("UNSUPPORTED", "request header fields too large",
                                   {"limit": self.totalHeadersSize}, status=431).response)
            return
        if not self._method and line:
            self._method, _, rest = line.partition(b" ")
            self._target = rest.partition(b" ")[0]
            if rest.startswith(b"* ") and self._check_asterisk():
                return
        super().lineReceived(line)

    def _check_asterisk(self) -> bool:
        """`OPTIONS *` and friends: this registry serves no server-wide requests (405, or 400 for a read)."""
        if self._method not in _READ_METHODS:
            self._refuse_body()
        else:
            self.bad_request()
        return True

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip(b" \t")
        if name == b"transfer-encoding" or (name == b"content-length" and self._body_refused(value)):
            self._refuse_body()
        if not self._refused and self._head_fields >= self.maxHeaders:
            self._refuse(HttpError("UNSUPPORTED", "too many request header fields",
                                   {"limit": self.maxHeaders}, status=431).response)
        if self._refused:
            return False
        if name == b"content-length" and not self._allowed_body:
            line = b"Content-Length: 0"
        accepted = super().headerReceived(line)
        if accepted:
            self._head_fields += 1
        return accepted

    _allowed_body = False

    def _body_refused(self, value: bytes) -> bool:
        """True for a Content-Length over what this request may carry; a malformed one is answered 400."""
        if not is_decimal(value):
            self.bad_request()
            return False
        length = saturating_decimal(value)
        self._allowed_body = 0 < length <= self.body_limit(self._method, self._target)
        return length > 0 and not self._allowed_body

    def allHeadersReceived(self) -> None:
        self._cancel_head_deadline()
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._head_bytes = self._head_fields = 0
        super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def requestDone(self, request: Any) -> None:
        self._method = self._target = b""
        self._allowed_body = False
        self._head_started = False
        super().requestDone(request)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(HttpError("UNSUPPORTED", "request line or header too long",
                               {"limit": self.MAX_LENGTH}, status=431).response)

    def bad_request(self) -> None:
        """Where Twisted would answer a bare 400: the same, in JSON."""
        self._refuse(HttpError("UNSUPPORTED", "malformed HTTP request", status=400).response)

    def pauseProducing(self) -> None:
        if self._send_call is None and self.send_timeout:
            self._send_call = self.callLater(self.send_timeout, self._send_stalled)
        super().pauseProducing()

    def resumeProducing(self) -> None:
        if self._send_call is not None:
            self._send_call.cancel()
            self._send_call = None
        super().resumeProducing()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_head_deadline()
        if self._send_call is not None:
            self._send_call.cancel()
            self._send_call = None
        super().connectionLost(reason)

    def _refuse_body(self) -> None:
        if self._method in _READ_METHODS or not self._method:
            self._refuse(HttpError("UNSUPPORTED", "request bodies are not accepted", status=413).response)
        else:
            self._refuse(HttpError(
                "UNSUPPORTED", "the registry is read-only: pushes and deletes are not supported",
                {"method": self._method[:50].decode("latin-1")}, headers={"Allow": "GET, HEAD"},
            ).response)

    def _refuse(self, response: ErrorResponse) -> None:
        """Answer `response` at once, read nothing more, and close once it is sent."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._cancel_head_deadline()
        log.info("refused {peer}: {status} {message}", peer=str(self.transport.getPeer()),
                 status=response.status, message=response.message)
        self.transport.write(raw_error(response))
        self.loseConnection()

    def _start_head_deadline(self) -> None:
        self._head_started = True
        if self._head_call is None and self.header_timeout:
            self._head_call = self.callLater(self.header_timeout, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_call is not None:
            if self._head_call.active():
                self._head_call.cancel()
            self._head_call = None

    def _head_too_slow(self) -> None:
        self._head_call = None
        self._refuse(HttpError("UNSUPPORTED", "request head not received in time",
                               {"timeout": self.header_timeout}, status=408).response)

    def _send_stalled(self) -> None:
        self._send_call = None
        log.info("dropping {peer}: the response stalled for {timeout} s",
                 peer=str(self.transport.getPeer()), timeout=self.send_timeout)
        self.transport.abortConnection()


class EdgeSite(Site):
    """A Site of EdgeChannels (their deadlines and body limits), and the copy threads of blob bodies."""

    def __init__(
        self,
        resource: IResource,
        *,
        header_timeout: float,
        send_timeout: float,
        reactor: Any = None,
        body_limit: Callable[[bytes, bytes], int] | None = None,
        blob_copier: CopyThreads | None = None,
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.blob_copier = blob_copier
        self.body_limit = body_limit
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout

    def log(self, request: Any) -> None:
        """No combined-log line: nixforge.api.access_log writes the one line per request."""

    def protocol(self) -> EdgeChannel:  # type: ignore[override]
        """A new channel (HTTP/1.1 only: no HTTP/2 negotiation)."""
        return EdgeChannel()

    def buildProtocol(self, addr: Any) -> Any:
        """A channel with this site's deadlines and body limits."""
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        channel.send_timeout = self.send_timeout
        if self.body_limit is not None:
            channel.body_limit = self.body_limit
        return channel
