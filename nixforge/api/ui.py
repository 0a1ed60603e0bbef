"""The web pages at `/` and `/ui/…`: rendered from templates, behind a strict Content-Security-Policy."""

from __future__ import annotations

import re
from importlib.resources import files

from attrs import define, field
from twisted.web.iweb import IRequest
from twisted.web.template import Element, flattenString

from nixforge.api.ui_facts import UiFacts
from nixforge.api.ui_pages import Build, Home, Layout, Message, Package
from nixforge.references import NAME_PATTERN

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC = files("nixforge.api") / "ui_assets"
STATIC_TYPES = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8",
                "favicon.svg": "image/svg+xml"}
STATIC_PREFIX = "-/static/"
BUILDS_PREFIX = "builds/"
_BUILD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(f"(?:{NAME_PATTERN.pattern})")
_DOCTYPE = b"<!DOCTYPE html>\n"


@define(eq=False)
class UiPages:
    """Render a page for a path below `/ui/` (or `/` itself); every page reads facts, never starts Nix."""

    facts: UiFacts
    _static: dict[str, bytes] = field(factory=dict, init=False)

    async def render(self, request: IRequest, path: str | None) -> bytes:
        """The page (or static file) for `path` (None for `/`), with its headers; 404 page if none."""
        host = (request.getHeader(b"host") or b"localhost").decode("latin-1")
        if path is None or path == "":
            return await self._page(request, "Images", Home(await self.facts.overview(), host))
        if path.startswith(STATIC_PREFIX):
            return self._static_file(request, path.removeprefix(STATIC_PREFIX))
        if path.startswith(BUILDS_PREFIX) and _BUILD_ID.fullmatch(path.removeprefix(BUILDS_PREFIX)):
            return await self._build(request, path.removeprefix(BUILDS_PREFIX))
        if _NAME.fullmatch(path):
            return await self._package(request, path, host)
        return await self._not_found(request, "No such page", "There is no page at this address.")

    async def _package(self, request: IRequest, name: str, host: str) -> bytes:
        records = self.facts.records_of(name)
        if not records and not self.facts.catalog_has(name):
            return await self._not_found(request, "No such image",
                                         f"{name} is neither stored nor in the flake's catalog (as last evaluated).")
        return await self._page(request, name, Package(name, await self.facts.stored_tags(records), host))

    async def _build(self, request: IRequest, build_id: str) -> bytes:
        found = self.facts.builds.log_so_far(build_id)
        if found is None:
            return await self._not_found(request, "No such build",
                                         "Only the running builds and the last finished ones are kept.")
        build, lines = found
        return await self._page(request, f"Build of {build['name']}:{build['tag']}", Build(build, lines))

    async def _not_found(self, request: IRequest, heading: str, message: str) -> bytes:
        request.setResponseCode(404)
        return await self._page(request, heading, Message(heading, message))

    async def _page(self, request: IRequest, title: str, content: Element) -> bytes:
        body = _DOCTYPE + await flattenString(None, Layout(title, content))
        _secure_headers(request)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return b"" if request.method == b"HEAD" else body

    def _static_file(self, request: IRequest, name: str) -> bytes:
        content_type = STATIC_TYPES.get(name)
        if content_type is None:
            request.setResponseCode(404)
            body = b"no such file\n"
            content_type = "text/plain; charset=utf-8"
        else:
            body = self._static.get(name) or self._static.setdefault(name, (STATIC / name).read_bytes())
            request.setHeader(b"Cache-Control", b"max-age=300")
        _secure_headers(request)
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return b"" if request.method == b"HEAD" else body


def _secure_headers(request: IRequest) -> None:
    """Only the page's own scripts and styles; no framing, no sniffing, no referrer."""
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode())
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Frame-Options", b"DENY")

