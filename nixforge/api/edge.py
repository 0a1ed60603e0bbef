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
  seconds; dropping the connection stops the blob producer, which closes its file;
- connections are capped in total and per client address; one more is answered 503 and closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site

from nixforge.api.copy_threads import CopyThreads
from nixforge.api.errors import API_VERSION, API_VERSION_HEADER, ErrorResponse, HttpError
from nixforge.api.numbers import is_decimal, saturating_decimal

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


class EdgeChannel(HTTPChannel):
    """An HTTPChannel with deadlines, no request bodies, and JSON answers for what it refuses."""

    MAX_LENGTH = _MAX_HEAD
    totalHeadersSize = _MAX_HEAD
    maxHeaders = 100
    header_timeout = 20.0
    send_timeout = 60.0

    _refused = False
    _head_started = False
    _head_call: IDelayedCall | None = None
    _send_call: IDelayedCall | None = None
    _method: bytes = b""
    _target: bytes = b""
    body_limit: Callable[[bytes, bytes], int] = staticmethod(lambda method, target: 0)
    on_lost: Callable[[], None] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_head_deadline()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._head_started and not self._handlingRequest and data:
            self._start_head_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
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
            self._respondToBadRequestAndDisconnect()
        return True

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip(b" \t")
        if name == b"transfer-encoding" or (name == b"content-length" and self._body_refused(value)):
            self._refuse_body()
        if not self._refused and self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(HttpError("UNSUPPORTED", "too many request header fields",
                                   {"limit": self.maxHeaders}, status=431).response)
        if self._refused:
            return False
        if name == b"content-length" and not self._allowed_body:
            line = b"Content-Length: 0"
        return super().headerReceived(line)

    _allowed_body = False

    def _body_refused(self, value: bytes) -> bool:
        """True for a Content-Length over what this request may carry; a malformed one is answered 400."""
        if not is_decimal(value):
            self._respondToBadRequestAndDisconnect()
            return False
        length = saturating_decimal(value)
        self._allowed_body = 0 < length <= self.body_limit(self._method, self._target)
        return length > 0 and not self._allowed_body

    def allHeadersReceived(self) -> None:
        self._cancel_head_deadline()
        super().allHeadersReceived()

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

    def _respondToBadRequestAndDisconnect(self) -> None:
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
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost()
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


class _Busy(Protocol):
    """Answer 503 and close: a connection over the caps."""

    def __init__(self, response: ErrorResponse) -> None:
        self._response = response

    def connectionMade(self) -> None:
        self.transport.write(raw_error(self._response))
        self.transport.loseConnection()


class EdgeSite(Site):
    """A Site of EdgeChannels, with a cap on open connections in total and per client address."""

    def __init__(
        self,
        resource: IResource,
        header_timeout: float = 20.0,
        send_timeout: float = 60.0,
        max_connections: int = 4096,
        max_client_connections: int = 1024,
        reactor: Any = None,
        body_limit: Callable[[bytes, bytes], int] | None = None,
        blob_copier: CopyThreads | None = None,
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.blob_copier = blob_copier
        self.body_limit = body_limit
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        self.max_client_connections = max_client_connections
        self.open_connections = 0
        self.open_by_client: dict[str, int] = {}

    def log(self, request: Any) -> None:
        """No combined-log line: nixforge.api.access_log writes the one line per request."""

    def protocol(self) -> EdgeChannel:  # type: ignore[override]
        """A new channel (HTTP/1.1 only: no HTTP/2 negotiation)."""
        return EdgeChannel()

    def buildProtocol(self, addr: Any) -> Any:
        client = getattr(addr, "host", "?")
        if self.open_connections >= self.max_connections:
            return self._busy("too many connections", self.max_connections)
        if self.open_by_client.get(client, 0) >= self.max_client_connections:
            return self._busy("too many connections from this client", self.max_client_connections)
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        channel.send_timeout = self.send_timeout
        if self.body_limit is not None:
            channel.body_limit = self.body_limit
        self.open_connections += 1
        self.open_by_client[client] = self.open_by_client.get(client, 0) + 1
        channel.on_lost = lambda: self._closed(client)
        return channel

    def _closed(self, client: str) -> None:
        self.open_connections -= 1
        left = self.open_by_client.get(client, 1) - 1
        if left > 0:
            self.open_by_client[client] = left
        else:
            self.open_by_client.pop(client, None)

    def _busy(self, message: str, limit: int) -> Protocol:
        log.info("refusing a connection: {message} (limit {limit})", message=message, limit=limit)
        busy = _Busy(HttpError("UNAVAILABLE", message, {"limit": limit}, headers={"Retry-After": "1"}).response)
        busy.factory = self
        return busy
