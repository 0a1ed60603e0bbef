"""`POST /-/refresh[/<name>]`: a git host's push webhook re-resolves moving tags now, answered 202 at once.

The request body (GitHub sends its push event as JSON) is read up to MAX_BODY bytes and ignored:
what changed is asked of Nix, never taken from the caller. Who may call it is the RefreshAccess
rule (NIXFORGE_REFRESH_FROM, loopback by default); when authentication is on, the edge
authenticates this route like every other.
"""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

from nixforge.api.errors import HttpError
from nixforge.images.interfaces import IImageService
from nixforge.references import validate_name
from nixforge.refresh_access import RefreshAccess

MAX_BODY = 64 * 1024
ALLOWED = "POST"


def body_limit(method: bytes, target: bytes) -> int:
    """How many body bytes the edge lets a request carry: MAX_BODY for `POST /-/refresh[/…]`, else none."""
    path = target.partition(b"?")[0]
    if method == b"POST" and (path == b"/-/refresh" or path.startswith(b"/-/refresh/")):
        return MAX_BODY
    return 0


def refresh(
    request: IRequest, images: IImageService, access: RefreshAccess, name: str | None, max_name_length: int
) -> bytes:
    """Check method and client, schedule the refreshes, and return the 202 JSON body."""
    if request.method != b"POST":
        raise HttpError("UNSUPPORTED", "only POST refreshes", {"method": request.method.decode("latin-1")},
                        status=405, headers={"Allow": ALLOWED})
    host = getattr(request.getClientAddress(), "host", None)
    if not access.allows(host):
        raise HttpError("DENIED", "refresh is not allowed from this address (see NIXFORGE_REFRESH_FROM)",
                        {"client": str(host)})
    if request.content is not None:
        request.content.read(MAX_BODY)  # a webhook's payload: bounded, and ignored
    if name is not None:
        name = validate_name(name, max_name_length)
    scheduled = images.refresh(name)
    body = json.dumps({"repository": name, "scheduled": scheduled}, separators=(",", ":")).encode()
    request.setResponseCode(202)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body
