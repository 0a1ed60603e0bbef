"""Every use of Twisted's private names, in one place; tests/api/test_twisted_compat.py fails when they change.

Tested with the Twisted versions setup.py allows. What is here, and why no public API does it:
- `transport_idle`: whether a TCP transport has written all it buffered (the response head), before a
  blob body is sent past Twisted on the same socket. `abstract.FileDescriptor` keeps that in
  `dataBuffer`, `offset`, `_tempDataBuffer` and `_tempDataLen`.
- `count_sent`: bytes written past Twisted count in `Request.sentLength` (the access log reads it).
- `BadRequestHook`: Twisted answers a malformed request with a bare 400 from
  `HTTPChannel._respondToBadRequestAndDisconnect`; the edge answers it in JSON instead.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest

# The attributes `transport_idle` reads, and the hook `BadRequestHook` overrides.
TRANSPORT_BUFFER_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen")
BAD_REQUEST_HOOK = "_respondToBadRequestAndDisconnect"


def transport_idle(transport: Any) -> bool:
    """True once a Twisted TCP transport has no buffered bytes left (all it was given is in the kernel)."""
    return not transport._tempDataLen and len(transport.dataBuffer) <= transport.offset


def count_sent(request: IRequest, count: int) -> None:
    """Add `count` bytes written past Twisted to the request's sent length."""
    request.sentLength = getattr(request, "sentLength", 0) + count


class BadRequestHook(HTTPChannel):
    """An HTTPChannel that calls `bad_request()` where Twisted would answer a bare 400 and disconnect."""

    def bad_request(self) -> None:
        """Answer a malformed request (override); the default is Twisted's own bare 400."""
        HTTPChannel._respondToBadRequestAndDisconnect(self)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.bad_request()
