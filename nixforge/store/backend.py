"""Open the durable state where NIXFORGE_STORE says: the data dir (default) or an S3 bucket."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixforge.store.durable_index import FilesystemTagIndex, RecordTagIndex
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.interfaces import ICollectableBlobStore, IRecordStore
from nixforge.store.locked_revisions import FilesystemLockedRevisions, RecordLockedRevisions
from nixforge.store.records import FilesystemRecordStore
from nixforge.store.s3_client import S3Calls, S3Location, S3Settings

log = Logger()


class StoreUnreachable(Exception):
    """The configured object store cannot be used at start-up (no bucket, no credentials, no answer)."""


@frozen
class StoreBackend:
    """The blob store, the record store, the tag index and the locked revisions of one backend."""

    blobs: ICollectableBlobStore
    records: IRecordStore
    index: RecordTagIndex
    revisions: RecordLockedRevisions
    description: str
    calls: S3Calls | None = None
    probe: Callable[[], object] | None = None
    """A small request that must succeed while the store is usable (None: the data dir, checked anyway)."""

    def refresh(self) -> int:
        """Take the records other replicas stored since the last look (one listing each); return how many. Blocks.

        Blobs are not listed: the bucket may hold hundreds of thousands, and the serving path asks
        for the size of one it has not seen yet when a client wants it (one `HEAD`, remembered).
        """
        if self.calls is None:
            return 0  # the data dir: this process is its only writer
        self.revisions.refresh()
        return self.index.refresh()

    def close(self) -> None:
        """Release the S3 client and its pool (nothing to do for files)."""
        if self.calls is not None:
            self.calls.close()


def open_store(url: str, data_dir: str, clock: Callable[[], float], retention: float,
               settings: S3Settings | None = None, grace: float = 3600.0,
               on_reactor: Callable[[], bool] = lambda: False) -> StoreBackend:
    """The backend of `url`: empty for the data dir, `s3://bucket[/prefix]` for a bucket.

    With a bucket, the data dir holds only scratch (temporary files, Nix GC roots). Blocks: it
    reads the whole index. Raises StoreUnreachable when the bucket cannot be read.
    """
    if not url:
        records = FilesystemRecordStore(data_dir)
        records.remove_temporaries(["", "layers"])
        return StoreBackend(FilesystemBlobStore(data_dir), records,
                            FilesystemTagIndex(data_dir, clock=clock, retention=retention),
                            FilesystemLockedRevisions(data_dir), f"data dir {data_dir}")
    from nixforge.store.s3_blobs import S3BlobStore
    from nixforge.store.s3_client import make_client
    from nixforge.store.s3_records import S3RecordStore

    location = S3Location.parse(url)
    settings = settings or S3Settings()
    calls = S3Calls(make_client(settings), settings)
    blobs = S3BlobStore(calls, location, os.path.join(data_dir, "tmp"), grace=grace, on_reactor=on_reactor)
    try:
        calls("head_bucket", Bucket=location.bucket)
        s3_records = S3RecordStore(calls, location)
        index = RecordTagIndex(s3_records, clock=clock, retention=retention)
        revisions = RecordLockedRevisions(s3_records)
    except Exception as error:
        calls.close()
        raise StoreUnreachable(f"cannot use {url} ({settings.endpoint or 'AWS'}): {error}") from None
    return StoreBackend(blobs, s3_records, index, revisions, f"{url} at {settings.endpoint or 'AWS'}", calls,
                        probe=lambda: read_readiness_object(s3_records))


READINESS_KEY = "readiness.json"
"""A small record every readiness check reads back (created when missing)."""


def read_readiness_object(records: IRecordStore) -> None:
    """Read an object from the store, as a blob GET would; raise when it can't (StoreUnavailable, ...). Blocks.

    A bucket-level request (`HeadBucket`) can succeed while the servers holding the objects are
    still down (a store just restarted): reading an object checks the path every pull takes.
    """
    if records.get(READINESS_KEY) is None:
        records.swap(READINESS_KEY, b'{"written by": "nixforge readiness checks"}\n', None)
        if records.get(READINESS_KEY) is None:
            raise StoreUnreachable("the readiness object written just now cannot be read back")


REFRESH_INTERVAL = 15.0
"""Seconds between looks at what other replicas stored (one listing of the tag records, one of the locks)."""


class StoreRefreshService(TimerService):
    """With a shared bucket: every REFRESH_INTERVAL seconds, take other replicas' records."""

    def __init__(self, backend: StoreBackend, run_in_thread: Callable[..., Deferred[Any]], clock: Any,
                 interval: float = REFRESH_INTERVAL) -> None:
        super().__init__(interval, self._tick)
        self.backend = backend
        self.run_in_thread = run_in_thread
        self.clock = clock  # TimerService would use the global reactor otherwise
        self._running: Deferred[Any] | None = None

    def _tick(self) -> Deferred[Any] | None:
        if self._running is not None:
            return None  # the last look is still running (a slow store): skip this one
        running = self.run_in_thread(self.backend.refresh)
        self._running = running

        def done(result: object) -> None:
            self._running = None
            if isinstance(result, Failure):
                log.warn("cannot refresh from the store: {error}", error=result.getErrorMessage())
            elif result:
                log.info("took {count} tag records other replicas stored", count=result)

        return running.addBoth(done)
