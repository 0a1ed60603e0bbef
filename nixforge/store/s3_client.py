"""One boto3 S3 client per process, and every call to it made in a thread pool of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

from nixforge.errors import StoreUnavailable

DEFAULT_POOL = 16
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
RETRY_AFTER = 5


@frozen
class S3Location:
    """Where the durable state lives: a bucket and a key prefix (empty, or ending in `/`)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Read `s3://bucket[/prefix]`; raise ValueError for anything else."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be s3://bucket[/prefix]")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")


@frozen
class S3Settings:
    """How to reach the store: the endpoint (empty: AWS), the pool size, the timeouts."""

    endpoint: str = ""
    pool: int = DEFAULT_POOL
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT
    region: str | None = None


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client: credentials and region from boto3's usual chain, SigV4, path style with an endpoint."""
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=settings.pool,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        signature_version="s3v4",
        s3={"addressing_style": "path"} if settings.endpoint else {},
    )
    session = boto3.session.Session()
    region = settings.region or session.region_name or "us-east-1"
    return session.client("s3", endpoint_url=settings.endpoint or None, region_name=region, config=config)


def error_code(error: BaseException) -> str:
    """The S3 error code of a ClientError (`PreconditionFailed`, `NoSuchKey`, `404`...), else ''."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def http_status(error: BaseException) -> int:
    """The HTTP status of a ClientError, else 0."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_missing(error: BaseException) -> bool:
    """Whether a ClientError says the key does not exist."""
    return error_code(error) in ("NoSuchKey", "404", "NotFound") or http_status(error) == 404


def is_conflict(error: BaseException) -> bool:
    """Whether a ClientError says a condition failed (412) or a concurrent write won (409)."""
    return error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict") or http_status(error) in (409, 412)


@frozen
class CallStats:
    """S3 requests of one operation and outcome: how many, and their total seconds."""

    count: int = 0
    seconds: float = 0.0


@frozen
class S3Calls:
    """Run client calls in a pool of `settings.pool` threads and wait for them, within a bound.

    A store that does not answer (refused, timed out, 5xx) raises StoreUnavailable, which the API
    answers with 503 and Retry-After. `stats` counts requests by (operation, outcome).
    """

    client: Any
    settings: S3Settings = field(factory=S3Settings)
    _executor: ThreadPoolExecutor = field(init=False)
    stats: dict[tuple[str, str], CallStats] = field(init=False, factory=dict)
    _lock: threading.Lock = field(init=False, factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_executor", ThreadPoolExecutor(self.settings.pool, thread_name_prefix="nixforge-s3"))

    @property
    def bound(self) -> float:
        """The longest a call may take: connect and read, for each of boto3's attempts."""
        return 2 * (self.settings.connect_timeout + self.settings.read_timeout) + 1

    def __call__(self, operation: str, **kwargs: Any) -> Any:
        """Call `client.<operation>(**kwargs)` in the pool; ClientErrors pass, outages become StoreUnavailable."""
        return self.run(operation, lambda: getattr(self.client, operation)(**kwargs))

    def run(self, operation: str, function: Callable[[], Any]) -> Any:
        """Run `function` (which talks to S3) in the pool, counted under `operation`."""
        from botocore.exceptions import BotoCoreError, ClientError

        started = time.monotonic()
        outcome = "ok"
        try:
            return self._executor.submit(function).result(timeout=self.bound)
        except ClientError as error:
            status = http_status(error)
            outcome = str(status or error_code(error))
            if status >= 500:
                raise StoreUnavailable("the object store failed; retry", RETRY_AFTER,
                                       {"store": "s3", "status": status}) from error
            raise
        except (BotoCoreError, FutureTimeout, OSError) as error:
            outcome = "unreachable"
            raise StoreUnavailable("the object store is unreachable; retry", RETRY_AFTER,
                                   {"store": "s3", "error": type(error).__name__}) from error
        finally:
            self._count(operation, outcome, time.monotonic() - started)

    def _count(self, operation: str, outcome: str, seconds: float) -> None:
        with self._lock:
            old = self.stats.get((operation, outcome), CallStats())
            self.stats[(operation, outcome)] = CallStats(old.count + 1, old.seconds + seconds)

    def close(self) -> None:
        """Stop the pool and close the client's connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.client, "close", None)
        if close is not None:
            close()
