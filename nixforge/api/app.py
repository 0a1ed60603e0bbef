"""The Klein application serving the pull side of the OCI distribution API from an IImageService."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import BadHost, MethodNotAllowed, NotFound
from werkzeug.http import parse_etags

from nixforge.api.accept import choose_manifest
from nixforge.api.access_log import BLOB_ROUTE, UNMATCHED_ROUTE, note_build, set_route
from nixforge.api.blob_sender import parse_range
from nixforge.api.builds import BuildBook
from nixforge.api.errors import API_VERSION, API_VERSION_HEADER, INTERNAL_ERROR, HttpError, error_response, write_error
from nixforge.api.host import host_problem
from nixforge.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from nixforge.api.metrics import RegistryMetrics
from nixforge.api.nix_cache import NixCacheApi
from nixforge.api.pagination import next_link, paginate, parse_page_request
from nixforge.api.refresh import refresh
from nixforge.api.routing import CONVERTERS
from nixforge.api.sendfile import send_blob
from nixforge.api.stream_sender import StreamSender
from nixforge.api.ui import UiPages
from nixforge.images.interfaces import BlobFile, IImageService
from nixforge.oci import media_types as mt
from nixforge.oci.referrers import referrers_index
from nixforge.readiness import NOT_CHECKED, Readiness
from nixforge.redaction import Verbatim
from nixforge.references import MAX_NAME_LENGTH, MAX_TAG_LENGTH, Digest, parse_digest, parse_reference, validate_name
from nixforge.refresh_access import RefreshAccess

log = Logger()

ALLOWED_METHODS = "GET, HEAD"
_READ_METHODS = (b"GET", b"HEAD")
_SUCCESS_ONLY_HEADERS = (b"Content-Range", b"Docker-Content-Digest", b"ETag", b"Vary", b"Link")


def _header(request: IRequest, name: bytes) -> str | None:
    """Return the first value of a request header, decoded, or None."""
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _headers(request: IRequest, name: bytes) -> list[str]:
    """Return every value of a request header, decoded."""
    return [value.decode("latin-1") for value in request.requestHeaders.getRawHeaders(name, [])]


def etag_matches(if_none_match: list[str], digest: str) -> bool:
    """True if an `If-None-Match` list names `digest` (quoted or not, weak or strong) or is `*` (werkzeug's parser)."""
    return bool(if_none_match) and parse_etags(", ".join(if_none_match)).contains_weak(digest)


_Handler = Callable[..., Awaitable[bytes | None]]


def _read_only(template: str) -> Callable[[_Handler], _Handler]:
    """Route decorator: note the route template, refuse writes (405 with Allow), and answer every
    error a handler raises with its OCI JSON response."""

    def decorate(handler: _Handler) -> _Handler:
        @functools.wraps(handler)
        async def route(self: RegistryApi, request: IRequest, *args: Any, **kwargs: Any) -> bytes | None:
            set_route(request, template)
            try:
                self._require_read(request)
                return await handler(self, request, *args, **kwargs)
            except CancelledError:
                raise
            except Exception as error:
                return self._error(request, error)

        return route

    return decorate


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
    would answer in HTML (a path that is not UTF-8 once unquoted, a Host werkzeug can't bind) gets
    an OCI JSON error instead."""

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        super().__init__()
        self._wrapped = wrapped

    def render(self, request: IRequest) -> Any:
        """Add the version header, then let Klein route the request."""
        request.setHeader(API_VERSION_HEADER, API_VERSION)
        problem = host_problem(request)
        if problem is not None:
            return _bad_host(request, problem)
        if not _utf8_url(request):
            path = Verbatim(request.uri.lstrip(b"/")[:300].decode("latin-1"))
            return write_error(request, HttpError("NAME_INVALID", "the path is not UTF-8 once percent-decoded",
                                                  {"path": path}).response)
        try:
            return self._wrapped.render(request)
        except BadHost:  # Klein binds werkzeug's map to the host first: nothing is routed or written yet
            return _bad_host(request, "the Host header is not a valid host name (an empty label, or one too long)")


def _bad_host(request: IRequest, problem: str) -> bytes:
    """A malformed Host header's answer: 400 in OCI JSON."""
    return write_error(request, HttpError("UNSUPPORTED", problem, {"header": "Host"}, status=400).response)


class RegistryApi:
    """The OCI distribution API (pull side): routes, validation, negotiation and error mapping."""

    app = Klein()
    # werkzeug would answer `/v2//x` with an HTML 308 to `/v2/x`; a registry path has no empty part to merge.
    app.url_map.merge_slashes = False
    app.url_map.converters.update(CONVERTERS)

    def __init__(
        self,
        images: IImageService,
        reactor: Any,
        max_name_length: int = MAX_NAME_LENGTH,
        max_tag_length: int = MAX_TAG_LENGTH,
        error_log_tail: bool = True,
        refresh_access: RefreshAccess | None = None,
        readiness: Callable[[], Readiness] | None = None,
        builds: BuildBook | None = None,
        metrics: RegistryMetrics | None = None,
        ui: UiPages | None = None,
        nix_cache: NixCacheApi | None = None,
        blob_url: Callable[[str], str | None] | None = None,
        blob_thread: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self._ui = ui
        self._nix_cache = nix_cache
        self._blob_url = blob_url
        self._blob_thread = blob_thread
        self._builds = builds or BuildBook()
        self._metrics = metrics
        self._readiness = readiness or (lambda: NOT_CHECKED)
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
    @_read_only("/v2/")
    async def base(self, request: IRequest) -> bytes:
        """`/v2/`: the API version check."""
        return self._json(request, {})

    @app.route("/v2/_catalog")
    @_read_only("/v2/_catalog")
    async def catalog(self, request: IRequest) -> bytes:
        """`/v2/_catalog`: the repositories, paged."""
        return await self._catalog(request)

    @app.route("/v2/<repository:name>/manifests/<segment:reference>")
    @app.route("/v2/<anyname:name>/manifests/<segment:reference>")
    @_read_only("/v2/{name}/manifests/{reference}")
    async def manifest(self, request: IRequest, name: str, reference: str) -> bytes:
        """`/v2/<name>/manifests/<tag or digest>`."""
        return await self._manifest(request, validate_name(name, self._max_name_length), reference)

    @app.route("/v2/<repository:name>/blobs/<digest:digest>")
    @app.route("/v2/<anyname:name>/blobs/<segment:digest>")
    @_read_only(BLOB_ROUTE)
    async def blob(self, request: IRequest, name: str, digest: str) -> bytes | None:
        """`/v2/<name>/blobs/<digest>`, whole or one byte range."""
        return await self._blob(request, validate_name(name, self._max_name_length), digest)

    @app.route("/v2/<repository:name>/referrers/<digest:digest>")
    @app.route("/v2/<anyname:name>/referrers/<segment:digest>")
    @_read_only("/v2/{name}/referrers/{digest}")
    async def referrers(self, request: IRequest, name: str, digest: str) -> bytes:
        """`/v2/<name>/referrers/<digest>`: the artifacts whose subject is the digest."""
        return await self._referrers(request, validate_name(name, self._max_name_length), digest)

    @app.route("/v2/<repository:name>/tags/list")
    @app.route("/v2/<anyname:name>/tags/list")
    @_read_only("/v2/{name}/tags/list")
    async def tags(self, request: IRequest, name: str) -> bytes:
        """`/v2/<name>/tags/list`, paged."""
        return await self._tags(request, validate_name(name, self._max_name_length))

    @app.route("/nix-cache/<path:rest>")
    @_read_only("/nix-cache/{file}")
    async def nix_cache(self, request: IRequest, rest: str) -> bytes | None:
        """The Nix binary cache of the served closures (nixforge.api.nix_cache); 404 when it is off."""
        if self._nix_cache is None:
            raise HttpError("UNSUPPORTED", "no binary cache here: NIXFORGE_CACHE_KEY_FILE is not set",
                            {"setting": "NIXFORGE_CACHE_KEY_FILE"}, status=404)
        return await self._nix_cache.handle(request, rest, self._deliver)

    @app.route("/healthz")
    @_read_only("/healthz")
    async def healthz(self, request: IRequest) -> bytes:
        """Liveness: 200 while the process serves."""
        return self._json(request, {"status": "alive"})

    @app.route("/readyz")
    @_read_only("/readyz")
    async def readyz(self, request: IRequest) -> bytes:
        """Readiness from the last periodic check: 200, or 503 saying what is wrong."""
        state = self._readiness()
        if state.ready:
            return self._json(request, {"status": "ready"})
        raise HttpError("UNAVAILABLE", "not ready", {"problems": list(state.problems)})

    @app.route("/metrics")
    @_read_only("/metrics")
    async def metrics(self, request: IRequest) -> bytes:
        """Prometheus text format of every series (404 when metrics are off)."""
        if self._metrics is None:
            raise HttpError("UNSUPPORTED", "metrics are off (NIXFORGE_METRICS=false)", status=404)
        body = self._metrics.exposition()
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return b"" if request.method == b"HEAD" else body

    @app.route("/-/builds")
    @_read_only("/-/builds")
    async def builds(self, request: IRequest) -> bytes:
        """The running and recent builds, newest first."""
        return self._json(request, {"builds": self._builds.builds()})

    @app.route("/-/builds/<string:build_id>/log")
    @_read_only("/-/builds/{id}/log")
    async def build_log(self, request: IRequest, build_id: str) -> bytes | None:
        """The build's log so far, then its live lines (chunked) until it ends: `curl -N` follows it."""
        if not self._builds.has(build_id):
            raise HttpError("NAME_UNKNOWN", "no such build (only the running and the last builds are kept)",
                            {"build": build_id[:64]}, status=404)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if request.method == b"HEAD":
            return b""
        followed = self._builds.follow(build_id, lambda line: request.write(line.encode("utf-8", "replace") + b"\n"))
        if followed is not None:
            await followed
        return None

    @app.route("/")
    @app.route("/ui/<path:path>")
    @_read_only("/ui")
    async def ui(self, request: IRequest, path: str | None = None) -> bytes:
        """The web pages (nixforge.api.ui); a JSON 404 when they are off (NIXFORGE_UI=false)."""
        if self._ui is None:
            raise HttpError("UNSUPPORTED", "the web pages are off (NIXFORGE_UI=false)", status=404)
        return await self._ui.render(request, path)

    @app.route("/-/refresh", strict_slashes=False)
    @app.route("/-/refresh/<path:name>")
    def refresh(self, request: IRequest, name: str | None = None) -> bytes:
        """`POST /-/refresh[/<name>]`: re-resolve moving tags now (nixforge.api.refresh)."""
        set_route(request, "/-/refresh")
        try:
            return refresh(request, self._images, self._refresh_access, name, self._max_name_length)
        except Exception as error:
            return self._error(request, error)

    @app.handle_errors(NotFound)
    @_read_only(UNMATCHED_ROUTE)
    async def not_found(self, request: IRequest, failure: Failure) -> bytes | None:
        """No route matched: 405 for writes (this registry takes no pushes), else a JSON 404."""
        raise HttpError("UNSUPPORTED", "no such endpoint",
                        {"path": Verbatim(request.path.decode("latin-1")[:300])}, status=404)

    @app.handle_errors(MethodNotAllowed)
    @_read_only(UNMATCHED_ROUTE)
    async def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes | None:
        """A route that takes other methods (werkzeug's 405): the read-only registry's 405, in JSON."""
        raise HttpError("UNSUPPORTED", "this endpoint takes GET and HEAD only",
                        {"method": request.method.decode("latin-1")}, headers={"Allow": ALLOWED_METHODS})

    async def _manifest(self, request: IRequest, name: str, reference: str) -> bytes:
        parsed = parse_reference(reference, self._max_tag_length)
        if isinstance(parsed, Digest):
            document = await self._images.manifest_by_digest(name, str(parsed))
        else:
            manifests = await self._images.resolve_tag(name, parsed.value,
                                                       on_build=lambda build_id: note_build(request, build_id))
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
        if self._not_modified(request, blob.digest):
            request.setHeader(b"Accept-Ranges", b"bytes")
            return b""
        return await self._deliver(request, blob, b"application/octet-stream")

    async def _deliver(self, request: IRequest, blob: BlobFile, content_type: bytes) -> bytes | None:
        """Answer with a stored blob: a 307 to the bucket when it can, else its bytes (whole, one range, or HEAD)."""
        request.setHeader(b"Accept-Ranges", b"bytes")
        location = self._blob_url(blob.digest) if request.method == b"GET" and self._blob_url else None
        if location is not None:  # after the name, policy and auth checks; the URL is never logged
            request.setResponseCode(307)
            request.setHeader(b"Location", location.encode())
            request.setHeader(b"Content-Length", b"0")
            return b""
        byte_range = None if request.method == b"HEAD" else parse_range(_header(request, b"range"), blob.size)
        request.setHeader(b"Content-Type", content_type)
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", str(blob.size).encode())
            return b""
        offset, length = 0, blob.size
        if byte_range is not None:
            offset, length = byte_range.first, byte_range.length
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", byte_range.content_range().encode())
        request.setHeader(b"Content-Length", str(length).encode())
        if self._blob_thread is None:  # a local store: opening is one quick syscall
            await send_blob(request, blob.open(), offset, length, self._reactor, self._schedule)
        elif blob.ranged is not None:  # an object store (NIXFORGE_S3_REDIRECT=false): the range, as it comes
            reader = await self._blob_thread(blob.ranged, offset, length)
            await StreamSender(request, reader, length, self._blob_thread).start()
        else:
            await send_blob(request, await self._blob_thread(blob.open), offset, length, self._reactor,
                            self._schedule)
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
