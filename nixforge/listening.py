"""A Service that listens on an endpoint: start-up fails if it cannot, and the address bound is logged."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class ListeningService(Service):
    """Listen on `endpoint` with `factory` when started (as root, in `privilegedStartService`, for low ports).

    Endpoints that bind at once (TCP, TLS, UNIX) report the outcome synchronously: a port that cannot
    be bound ends start-up with one line (SystemExit), before the reactor runs. `listening` fires with
    the port; stopping stops listening.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self._started_listening = False

    def privilegedStartService(self) -> None:
        """Listen now (before twistd drops privileges)."""
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """Listen, unless privilegedStartService did."""
        super().startService()
        self._listen()

    def stopService(self) -> Deferred[None] | None:
        """Stop listening (open connections are left to the reactor's shutdown)."""
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        self._started_listening = False
        return port.stopListening()

    def _listen(self) -> None:
        if self._started_listening:
            return
        self._started_listening = True
        outcome: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self.endpoint!r} did not listen at once; nixforge needs an endpoint that does")
        result = outcome[0]
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, CannotListenError):
                raise SystemExit(f"nixforge: cannot listen on {error.interface or '*'}:{error.port}: "
                                 f"{error.socketError}") from None
            result.raiseException()
        self.port = result
        address = result.getHost()
        log.info("nixforge listening on {host}:{port}", host=getattr(address, "host", "?"),
                 port=getattr(address, "port", "?"))
        if not self.listening.called:
            self.listening.callback(result)
