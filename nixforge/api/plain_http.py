"""Answer a TLS handshake on the plain-HTTP port at once, so clients fall back to HTTP quickly.

podman, skopeo and containerd with `--tls-verify=false` first try HTTPS. A plain HTTP server that
waits for a request line keeps them until their handshake timeout (10 s); like Go's net/http, we
answer a TLS record with `400 Bad Request` and close, and the client retries over plain HTTP.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

TLS_HANDSHAKE_RECORD = 0x16
_REFUSAL_BODY = (
    b'{"errors": [{"code": "UNSUPPORTED", "message": "Client sent an HTTPS request to an HTTP server.", '
    b'"detail": null}]}'
)
TLS_REFUSAL = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: application/json\r\n"
    b"Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    % len(_REFUSAL_BODY)
) + _REFUSAL_BODY


class _RefuseTLS(ProtocolWrapper):
    """Pass bytes to HTTP, unless the connection opens with a TLS handshake record."""

    # Response bytes pass to the TCP transport unchanged, so a blob may be sent below this wrapper
    # (nixforge.api.sendfile looks for this mark; TLS, which encrypts, has none).
    passes_bytes_unchanged = True
    _checked = False

    def dataReceived(self, data: bytes) -> None:
        if not self._checked and data:
            self._checked = True
            if data[0] == TLS_HANDSHAKE_RECORD:
                self.transport.write(TLS_REFUSAL)
                self.transport.loseConnection()
                return
        super().dataReceived(data)


class RefuseTLSFactory(WrappingFactory):
    """Wrap an HTTP factory (a Site) listening without TLS."""

    protocol = _RefuseTLS

    def __init__(self, wrapped: IProtocolFactory) -> None:
        super().__init__(wrapped)
