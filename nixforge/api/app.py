"""The Klein application serving the pull side of the OCI distribution API from an IImageService."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import NotFound

from nixforge.api.accept import choose_manifest
from nixforge.api.blob_sender import parse_range
from nixforge.api.errors import API_VERSION, API_VERSION_HEADER, INTERNAL_ERROR, HttpError, error_response, write_error
from nixforge.api.pagination import next_link, paginate, parse_page_request
from nixforge.api.refresh import refresh
from nixforge.api.sendfile import send_blob
from nixforge.images.interfaces import IImageService
from nixforge.oci import media_types as mt
from nixforge.oci.referrers import referrers_index
from nixforge.references import Digest, parse_digest, parse_reference, validate_name
from nixforge.refresh_access import RefreshAccess

log = Logger()

ALLOWED_METHODS = "GET, HEAD"
_READ_METHODS = (b"GET", b"HEAD")
_TAGS_SUFFIX = "/tags/list"
_SUCCESS_ONLY_HEADERS = (b"Content-Range", b"Docker-Content-Digest", b"ETag", b"Vary", b"Link")


def _header(request: IRequest, name: bytes) -> str | None:
    """Return the first value of a request header, decoded, or None."""
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _headers(request: IRequest, name: bytes) -> list[str]:
    """Return every value of a request header, decoded."""
    return [value.decode("latin-1") for value in request.requestHeaders.getRawHeaders(name, [])]


def etag_matches(if_none_match: list[str], digest: str) -> bool:
    """True if an `If-None-Match` list names `digest` (quoted or not, weak or strong) or is `*`."""
    for header in if_none_match:
        for candidate in header.split(","):
            tag = candidate.strip()
            if tag.startswith("W/"):
                tag = tag[2:]
            tag = tag.strip('"')
            if tag in ("*", digest):
                return True
    return False


def _split_route(rest: str) -> tuple[str, str, str] | None:
    """Split the path after `/v2/` into (name, kind, argument); None if it is no known endpoint."""
    if rest.endswith(_TAGS_SUFFIX):
        return rest[: -len(_TAGS_SUFFIX)], "tags", ""
    head, _, argument = rest.rpartition("/")
    name, _, kind = head.rpartition("/")
    if not argument or not name or kind not in ("manifests", "blobs", "referrers"):
        return None
    return name, kind, argument


def _utf8_url(request: IRequest) -> bool:
    """True if the (unquoted) path and the host name are UTF-8, as Klein needs to route them."""
    try:
        b"/".join(request.prepath + request.postpath).decode("utf-8")
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _ApiVersionResource(Resource):
    """Wrap the Klein resource: every response carries the API version header, and what Klein
    would answer in HTML (a path that is not UTF-8 once unquoted) gets an OCI JSON error instead."""

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        super().__init__()
        self._wrapped = wrapped

    def render(self, request: IRequest) -> Any:
        """Add the version header, then let Klein route the request."""
        request.setHeader(API_VERSION_HEADER, API_VERSION)
        if not _utf8_url(request):
            return write_error(request, HttpError("NAME_INVALID", "the path is not UTF-8 once percent-decoded",
                                                  {"path": request.uri.lstrip(b"/")[:300].decode("latin-1")}).response)
        return self._wrapped.render(request)


class RegistryApi:
    """The OCI distribution API (pull side): routes, validation, negotiation and error mapping."""

    app = Klein()
    # werkzeug would answer `/v2//x` with an HTML 308 to `/v2/x`; a registry path has no empty part to merge.
    app.url_map.merge_slashes = False

    def __init__(
        self,
        images: IImageService,
        reactor: Any,
        max_name_length: int = 255,
        max_tag_length: int = 128,
        error_log_tail: bool = True,
        refresh_access: RefreshAccess | None = None,
    ) -> None:
        self._images = images
        self._error_log_tail = error_log_tail
        self._refresh_access = refresh_access or RefreshAccess()
        self._reactor = reactor
        self._max_name_length = max_name_length
        self._max_tag_length = max_tag_length

    def _schedule(self, call: Any) -> None:
        """Run `call` on a later reactor turn (lets a streaming blob yield to other connections)."""
        self._reactor.callLater(0, call)

    def resource(self) -> IResource:
        """Return the Twisted resource to serve (the Klein app, with the API version header)."""
        return _ApiVersionResource(self.app.resource())

    @app.route("/v2", strict_slashes=False)
    def base(self, request: IRequest) -> bytes:
        """`/v2/`: the API version check."""
        try:
            self._require_read(request)
            return self._json(request, {})
        except Exception as error:
            return self._error(request, error)

    @app.route("/v2/<path:rest>")
    async def v2(self, request: IRequest, rest: str) -> bytes | None:
        """Every other path under `/v2/`: dispatch on its suffix."""
        try:
            self._require_read(request)
            return await self._dispatch(request, rest)
        except CancelledError:
            raise
        except Exception as error:
            return self._error(request, error)

    @app.route("/-/refresh", strict_slashes=False)
    @app.route("/-/refresh/<path:name>")
    def refresh(self, request: IRequest, name: str | None = None) -> bytes:
        """`POST /-/refresh[/<name>]`: re-resolve moving tags now (nixforge.api.refresh)."""
        try:
            return refresh(request, self._images, self._refresh_access, name, self._max_name_length)
        except Exception as error:
            return self._error(request, error)

    @app.handle_errors(NotFound)
    async def not_found(self, request: IRequest, failure: Failure) -> bytes | None:
        """Paths outside `/v2/`: 405 for writes (this registry takes no pushes), else a JSON 404.

        A `/v2/…` path werkzeug did not match (its path converter stops at a line break) is
        dispatched like any other, so a bad name or tag still gets its own error code.
        """
        path = unquote(request.path.decode("latin-1"), errors="replace")
        if path.startswith("/v2/"):
            return await self.v2(request, path[len("/v2/"):])
        try:
            self._require_read(request)
        except Exception as error:
            return self._error(request, error)
        return self._error(request, HttpError("UNSUPPORTED", "no such endpoint", status=404))

    async def _dispatch(self, request: IRequest, rest: str) -> bytes | None:
        if rest == "_catalog":
            return await self._catalog(request)
        route = _split_route(rest)
        if route is None:
            raise HttpError("UNSUPPORTED", "no such endpoint", {"path": rest[:300]}, status=404)
        name, kind, argument = route
        name = validate_name(name, self._max_name_length)
        if kind == "manifests":
            return await self._manifest(request, name, argument)
        if kind == "blobs":
            return await self._blob(request, name, argument)
        if kind == "referrers":
            return await self._referrers(request, name, argument)
        return await self._tags(request, name)

    async def _manifest(self, request: IRequest, name: str, reference: str) -> bytes:
        parsed = parse_reference(reference, self._max_tag_length)
        if isinstance(parsed, Digest):
            document = await self._images.manifest_by_digest(name, str(parsed))
        else:
            manifests = await self._images.resolve_tag(name, parsed.value)
            document = choose_manifest(_headers(request, b"accept"), manifests)
            request.setHeader(b"Vary", b"Accept")
        request.setHeader(b"Content-Type", document.media_type.encode())
        if self._not_modified(request, document.digest):
            return b""
        request.setHeader(b"Content-Length", str(len(document.body)).encode())
        return b"" if request.method == b"HEAD" else document.body

    async def _blob(self, request: IRequest, name: str, digest_text: str) -> bytes | None:
        digest = parse_digest(digest_text)
        blob = await self._images.blob(name, str(digest))
        request.setHeader(b"Accept-Ranges", b"bytes")
        if self._not_modified(request, blob.digest):
            return b""
        byte_range = None if request.method == b"HEAD" else parse_range(_header(request, b"range"), blob.size)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", str(blob.size).encode())
            return b""
        offset, length = 0, blob.size
        if byte_range is not None:
            offset, length = byte_range.first, byte_range.length
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", byte_range.content_range().encode())
        request.setHeader(b"Content-Length", str(length).encode())
        await send_blob(request, blob.open(), offset, length, self._reactor, self._schedule)
        return None

    async def _referrers(self, request: IRequest, name: str, digest_text: str) -> bytes:
        """An image index of the artifacts whose subject is the digest, filtered by `?artifactType=`."""
        digest = parse_digest(digest_text)
        artifacts = await self._images.referrers(name, str(digest))
        wanted = request.args.get(b"artifactType")
        artifact_type = wanted[0].decode("utf-8", errors="replace") if wanted else None
        if artifact_type is not None:
            request.setHeader(b"OCI-Filters-Applied", b"artifactType")
        return self._json(request, referrers_index(artifacts, artifact_type), mt.OCI_INDEX)

    async def _tags(self, request: IRequest, name: str) -> bytes:
        page_request = parse_page_request(request.args)
        page = paginate(await self._images.tags(name), page_request)
        if page.next_last is not None and page_request.n is not None:
            link = next_link(f"/v2/{name}/tags/list", page_request.n, page.next_last)
            request.setHeader(b"Link", link.encode())
        return self._json(request, {"name": name, "tags": page.entries})

    async def _catalog(self, request: IRequest) -> bytes:
        page_request = parse_page_request(request.args)
        page = paginate(await self._images.repositories(), page_request)
        if page.next_last is not None and page_request.n is not None:
            link = next_link("/v2/_catalog", page_request.n, page.next_last)
            request.setHeader(b"Link", link.encode())
        return self._json(request, {"repositories": page.entries})

    def _require_read(self, request: IRequest) -> None:
        if request.method not in _READ_METHODS:
            raise HttpError(
                "UNSUPPORTED",
                "the registry is read-only: pushes and deletes are not supported",
                {"method": request.method.decode("latin-1")},
                headers={"Allow": ALLOWED_METHODS},
            )

    def _not_modified(self, request: IRequest, digest: str) -> bool:
        """Set the digest headers; answer 304 (and return True) if If-None-Match names the digest."""
        request.setHeader(b"Docker-Content-Digest", digest.encode())
        request.setHeader(b"ETag", f'"{digest}"'.encode())
        if etag_matches(_headers(request, b"if-none-match"), digest):
            request.setResponseCode(304)
            return True
        return False

    def _json(self, request: IRequest, document: object, content_type: str = "application/json") -> bytes:
        body = json.dumps(document, separators=(",", ":")).encode()
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return b"" if request.method == b"HEAD" else body

    def _error(self, request: IRequest, error: BaseException) -> bytes:
        """Turn an error into its OCI response; unexpected ones are logged with their traceback."""
        method = request.method.decode("latin-1")
        path = request.path.decode("utf-8", errors="replace")
        response = error_response(error)
        if response is None:
            log.failure(
                "unexpected error serving {method} {path}",
                failure=Failure(error, type(error), error.__traceback__),
                method=method,
                path=path,
            )
            response = INTERNAL_ERROR
        if not self._error_log_tail:
            response = response.without_log()
        for header in _SUCCESS_ONLY_HEADERS:
            request.responseHeaders.removeHeader(header)
        log.info(
            "error response {method} {path}: {status} {code}",
            method=method,
            path=path,
            status=response.status,
            code=response.code,
        )
        return write_error(request, response)
