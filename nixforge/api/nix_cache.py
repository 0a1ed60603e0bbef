"""HTTP side of the Nix binary cache under `/nix-cache/`: nix-cache-info, `<hash>.narinfo`, `nar/<file>`."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from twisted.web.iweb import IRequest

from nixforge.api.errors import HttpError
from nixforge.images.interfaces import BlobFile
from nixforge.images.nix_cache import NixCache

_NARINFO = re.compile(r"([0-9a-df-np-sv-z]{32})\.narinfo")
NARINFO_TYPE = b"text/x-nix-narinfo"
CACHE_INFO_TYPE = b"text/x-nix-cache-info"
NAR_TYPE = b"application/x-nix-nar"
Deliver = Callable[[IRequest, BlobFile, bytes], Awaitable[bytes | None]]


class NixCacheApi:
    """Route one `/nix-cache/<rest>` request; domain errors go back to the caller's error writer."""

    def __init__(self, cache: NixCache) -> None:
        self._cache = cache

    async def handle(self, request: IRequest, rest: str, deliver: Deliver) -> bytes | None:
        """Answer GET or HEAD of `rest` (the path below `/nix-cache/`); a NAR goes out as any blob (`deliver`)."""
        if rest == "nix-cache-info":
            return _text(request, self._cache.cache_info(), CACHE_INFO_TYPE)
        match = _NARINFO.fullmatch(rest)
        if match is not None:
            if request.method == b"HEAD":
                await self._cache.served_path(match.group(1))  # is it served: no NAR is made for a HEAD
                request.setHeader(b"Content-Type", NARINFO_TYPE)
                return b""
            return _text(request, await self._cache.narinfo(match.group(1)), NARINFO_TYPE)
        if rest.startswith("nar/") and "/" not in rest[4:]:
            return await deliver(request, await self._cache.nar(rest[4:]), NAR_TYPE)
        raise HttpError("UNSUPPORTED", "no such file in the Nix binary cache", {"path": rest[:200]}, status=404)


def _text(request: IRequest, body: bytes, content_type: bytes) -> bytes:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return b"" if request.method == b"HEAD" else body
