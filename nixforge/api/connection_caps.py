"""Cap open connections in total and per client address (a `twisted.protocols.policies` wrapper); 503 beyond."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from nixforge.api.edge import raw_error
from nixforge.api.errors import ErrorResponse, HttpError

log = Logger()


class _Busy(Protocol):
    """Answer 503 and close: a connection over the caps."""

    def __init__(self, response: ErrorResponse) -> None:
        self._response = response

    def connectionMade(self) -> None:
        self.transport.write(raw_error(self._response))
        self.transport.loseConnection()


class _Counted(ProtocolWrapper):
    """A connection within the caps; bytes pass unchanged (so a blob may be sent below it)."""

    passes_bytes_unchanged = True
    client = "?"


class ConnectionCaps(WrappingFactory):
    """Wrap a factory (the Site, or the TLS-refusing wrapper around it): at most `max_connections` open
    connections, and `max_client_connections` from one address; one more is answered 503 and closed.

    Counting rides on WrappingFactory's own `registerProtocol`/`unregisterProtocol`, called as each
    wrapped connection is made and lost.
    """

    protocol = _Counted

    def __init__(self, wrapped: IProtocolFactory, max_connections: int = 4096,
                 max_client_connections: int = 1024) -> None:
        super().__init__(wrapped)
        self.max_connections = max_connections
        self.max_client_connections = max_client_connections
        self.open_by_client: dict[str, int] = {}

    @property
    def open_connections(self) -> int:
        """Connections open now (within the caps)."""
        return len(self.protocols)

    def buildProtocol(self, addr: Any) -> Any:
        """A counted connection, or a 503 answer when a cap is reached."""
        client = getattr(addr, "host", "?")
        if len(self.protocols) >= self.max_connections:
            return self._busy("too many connections", self.max_connections)
        if self.open_by_client.get(client, 0) >= self.max_client_connections:
            return self._busy("too many connections from this client", self.max_client_connections)
        wrapper = super().buildProtocol(addr)
        if wrapper is not None:
            wrapper.client = client
        return wrapper

    def registerProtocol(self, p: Any) -> None:
        """A counted connection is made."""
        super().registerProtocol(p)
        self.open_by_client[p.client] = self.open_by_client.get(p.client, 0) + 1

    def unregisterProtocol(self, p: Any) -> None:
        """A counted connection is lost."""
        super().unregisterProtocol(p)
        left = self.open_by_client.get(p.client, 1) - 1
        if left > 0:
            self.open_by_client[p.client] = left
        else:
            self.open_by_client.pop(p.client, None)

    def _busy(self, message: str, limit: int) -> Protocol:
        log.info("refusing a connection: {message} (limit {limit})", message=message, limit=limit)
        busy = _Busy(HttpError("UNAVAILABLE", message, {"limit": limit}, headers={"Retry-After": "1"}).response)
        busy.factory = self
        return busy
