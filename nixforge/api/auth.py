"""HTTP Basic authentication against an htpasswd file, as one resource wrapping the whole API.

The check lives here and nowhere else: `AuthResource` wraps whatever resource serves the API (the
Klein app today, one route per endpoint tomorrow) and lets a request through only with valid
credentials. bcrypt runs in the thread pool; a successful check is remembered under a keyed hash
of user, password and the entry it matched (never the password), so a pull's dozens of requests
cost one bcrypt. Failed attempts are answered later and later per client address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import bcrypt
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from nixforge.api.errors import HttpError, write_error
from nixforge.api.htpasswd import HtpasswdFile

log = Logger()

REALM = "nixforge"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}"'}


def parse_basic(header: bytes | None) -> tuple[str, bytes] | None:
    """(user, password) from an `Authorization: Basic …` value, or None if absent or malformed."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
        user, colon, password = decoded.partition(b":")
        return (user.decode("utf-8"), password) if colon else None
    except (binascii.Error, UnicodeDecodeError):
        return None


class FailureThrottle:
    """Per client address: how many checks failed lately, and so how long to wait before answering.

    The delay doubles from `base_delay` with every failure up to `max_delay`; a success or
    `forget_after` quiet seconds reset it. At most `max_clients` addresses are remembered (the
    least recently failing one is dropped first), so memory stays bounded whoever knocks.
    """

    def __init__(self, clock: Any, base_delay: float = 0.5, max_delay: float = 8.0,
                 forget_after: float = 900.0, max_clients: int = 4096) -> None:
        self._clock = clock
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._forget_after = forget_after
        self._max_clients = max_clients
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def failed(self, client: str) -> float:
        """Count a failure of `client`; return the delay before its 401."""
        count, _ = self._current(client)
        count += 1
        self._failures[client] = (count, self._clock.seconds())
        self._failures.move_to_end(client)
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)
        return min(self._max_delay, self._base_delay * 2 ** (count - 1))

    def succeeded(self, client: str) -> None:
        """Forget the failures of `client`."""
        self._failures.pop(client, None)

    def _current(self, client: str) -> tuple[int, float]:
        count, when = self._failures.get(client, (0, 0.0))
        if count and self._clock.seconds() - when > self._forget_after:
            del self._failures[client]
            return 0, 0.0
        return count, when


class Authenticator:
    """Check Basic credentials against an htpasswd file: bcrypt in a thread, successes cached."""

    def __init__(
        self,
        htpasswd: HtpasswdFile,
        run_in_thread: Callable[..., Deferred[Any]],
        clock: Any,
        throttle: FailureThrottle | None = None,
        cache_size: int = 1024,
    ) -> None:
        self._htpasswd = htpasswd
        self._run_in_thread = run_in_thread
        self._clock = clock
        self.throttle = throttle or FailureThrottle(clock)
        self._cache_size = cache_size
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self.bcrypt_checks = 0

    @property
    def cached(self) -> int:
        """How many verified credentials are remembered."""
        return len(self._verified)

    async def allowed(self, header: bytes | None, client: str) -> bool:
        """True if `header` holds valid credentials; a wrong attempt returns False only after its delay."""
        credentials = parse_basic(header)
        if credentials is None and header is None:
            return False
        if credentials is not None and await self._valid(*credentials):
            self.throttle.succeeded(client)
            return True
        delay = self.throttle.failed(client)
        log.info("authentication failed for {client}; answering in {delay} s", client=client, delay=delay)
        await deferLater(self._clock, delay, lambda: None)
        return False

    async def _valid(self, user: str, password: bytes) -> bool:
        entries = await self._htpasswd.entries()
        hashed = entries.get(user)
        if hashed is None:
            return False
        key = hmac.new(self._cache_key, b"\0".join((user.encode(), password, hashed)), hashlib.sha256).digest()
        if key in self._verified:
            self._verified.move_to_end(key)
            return True
        self.bcrypt_checks += 1
        if not await self._run_in_thread(_bcrypt_matches, password, hashed):
            return False
        self._verified[key] = None
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return True


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    """Worker thread: bcrypt's verdict (a password over bcrypt's 72 bytes never matches)."""
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


# Probes of an orchestrator carry no credentials; these answer nothing but "alive" and "ready".
OPEN_PATHS = frozenset((b"/healthz", b"/readyz"))


class AuthResource(Resource):
    """Let a request reach the wrapped resource only with valid credentials; else 401 with a challenge."""

    isLeaf = True

    def __init__(self, wrapped: IResource, authenticator: Authenticator) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._authenticator = authenticator

    def render(self, request: IRequest) -> Any:
        """Check the credentials (asynchronously), then render the wrapped resource or the 401.

        The health probes (OPEN_PATHS) pass without credentials.
        """
        if request.path in OPEN_PATHS:
            return self._wrapped.render(request)
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        client = getattr(request.getClientAddress(), "host", "?")
        header = request.getHeader(b"authorization")
        checked = ensureDeferred(self._authenticator.allowed(header, client))
        checked.addCallback(self._answer, request, gone)
        checked.addErrback(self._failed, request, gone)
        return NOT_DONE_YET

    def _answer(self, allowed: bool, request: IRequest, gone: list[bool]) -> None:
        if gone:
            return
        if allowed:
            body = self._wrapped.render(request)
            if body is NOT_DONE_YET:
                return
        else:
            error = HttpError("UNAUTHORIZED", "authentication required", headers=CHALLENGE)
            body = write_error(request, error.response)
        request.write(body)
        request.finish()

    def _failed(self, failure: Any, request: IRequest, gone: list[bool]) -> None:
        log.failure("checking credentials failed", failure=failure)
        if not gone:
            request.write(write_error(request, HttpError("UNKNOWN", "internal server error", status=500).response))
            request.finish()
