"""Map domain errors and HTTP-level failures to OCI error responses (status, headers, redacted JSON body)."""

from __future__ import annotations

import json

from attrs import evolve, field, frozen
from twisted.web.iweb import IRequest

from nixforge.errors import (
    BlobUnknown,
    BuildFailed,
    BuildInProgress,
    BuildTimedOut,
    DigestInvalid,
    ForgeError,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    NoBuilder,
    StoreFull,
    TagInvalid,
    TooManyBuilds,
)
from nixforge.redaction import redact, redact_value

STATUS_BY_CODE: dict[str, int] = {
    "NAME_INVALID": 400,
    "TAG_INVALID": 400,
    "DIGEST_INVALID": 400,
    "MANIFEST_INVALID": 400,
    "SIZE_INVALID": 400,
    "PAGINATION_NUMBER_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "NAME_UNKNOWN": 404,
    "MANIFEST_UNKNOWN": 404,
    "BLOB_UNKNOWN": 404,
    "UNSUPPORTED": 405,
    "RANGE_INVALID": 416,
    "TOOMANYREQUESTS": 429,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
}

_CODE_BY_TYPE: tuple[tuple[type[ForgeError], str], ...] = (
    (NameInvalid, "NAME_INVALID"),
    (TagInvalid, "TAG_INVALID"),
    (DigestInvalid, "DIGEST_INVALID"),
    (NameUnknown, "NAME_UNKNOWN"),
    (ManifestUnknown, "MANIFEST_UNKNOWN"),
    (BlobUnknown, "BLOB_UNKNOWN"),
)


@frozen
class ErrorResponse:
    """One OCI error response: status, extra headers and the single error it reports."""

    status: int
    code: str
    message: str
    detail: object = None
    headers: dict[str, str] = field(factory=dict)

    def body(self) -> bytes:
        """Return the JSON body `{"errors":[{"code","message","detail"}]}`, redacted.

        This is the one place every error answer passes through, so it is where host paths outside
        /nix/store, URL credentials and query strings, and OSError file names are scrubbed.
        """
        error = {"code": self.code, "message": redact(self.message), "detail": redact_value(self.detail)}
        return json.dumps({"errors": [error]}, default=str).encode()

    def without_log(self) -> ErrorResponse:
        """The same answer without the build log tail in its detail (for public registries)."""
        if isinstance(self.detail, dict) and "log" in self.detail:
            return evolve(self, detail={key: value for key, value in self.detail.items() if key != "log"})
        return self


class HttpError(Exception):
    """An error raised by the HTTP layer itself (pagination, ranges, routing)."""

    def __init__(
        self,
        code: str,
        message: str,
        detail: object = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.response = ErrorResponse(
            status=STATUS_BY_CODE[code] if status is None else status,
            code=code,
            message=message,
            detail=detail,
            headers=dict(headers or {}),
        )


def error_response(error: BaseException) -> ErrorResponse | None:
    """Return the response for an expected error, or None if it is unexpected (a bug: log it)."""
    if isinstance(error, HttpError):
        return error.response
    if isinstance(error, (TooManyBuilds, BuildInProgress)):
        return ErrorResponse(
            status=429,
            code="TOOMANYREQUESTS",
            message=error.message,
            detail=error.detail,
            headers={"Retry-After": str(max(0, int(error.retry_after)))},
        )
    if isinstance(error, (StoreFull, NoBuilder)):
        return ErrorResponse(
            status=503,
            code="UNAVAILABLE",
            message=error.message,
            detail=error.detail,
            headers={"Retry-After": str(max(0, int(error.retry_after)))},
        )
    if isinstance(error, BuildTimedOut):
        return ErrorResponse(504, "UNKNOWN", f"build timed out: {error.message}", error.detail)
    if isinstance(error, BuildFailed):
        return ErrorResponse(500, "UNKNOWN", f"build failed: {error.message}", error.detail)
    for error_type, code in _CODE_BY_TYPE:
        if isinstance(error, error_type):
            return ErrorResponse(STATUS_BY_CODE[code], code, error.message, error.detail)
    if isinstance(error, ForgeError):
        return ErrorResponse(500, "UNKNOWN", error.message, error.detail)
    return None


INTERNAL_ERROR = ErrorResponse(500, "UNKNOWN", "internal server error")
API_VERSION_HEADER = b"Docker-Distribution-API-Version"
API_VERSION = b"registry/2.0"


def write_error(request: IRequest, response: ErrorResponse) -> bytes:
    """Set the status, headers and JSON type of an error answer on `request`; return its body (none for HEAD)."""
    request.setResponseCode(response.status)
    for header, value in response.headers.items():
        request.setHeader(header.encode(), value.encode())
    body = response.body()
    request.setHeader(API_VERSION_HEADER, API_VERSION)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return b"" if request.method == b"HEAD" else body
