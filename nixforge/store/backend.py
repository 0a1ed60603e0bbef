"""Open the durable state where NIXFORGE_STORE says: the data dir (default) or an S3 bucket."""

from __future__ import annotations

import os
from collections.abc import Callable

from attrs import frozen
from twisted.logger import Logger

from nixforge.store.durable_index import FilesystemTagIndex, RecordTagIndex
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.interfaces import ICollectableBlobStore, ILockedRevisions, IRecordStore
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
    revisions: ILockedRevisions
    description: str
    calls: S3Calls | None = None
    probe: Callable[[], object] | None = None
    """A small request that must succeed while the store is usable (None: the data dir, checked anyway)."""

    def close(self) -> None:
        """Release the S3 client and its pool (nothing to do for files)."""
        if self.calls is not None:
            self.calls.close()


def open_store(url: str, data_dir: str, clock: Callable[[], float], retention: float,
               settings: S3Settings | None = None, grace: float = 3600.0) -> StoreBackend:
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
    try:
        calls("head_bucket", Bucket=location.bucket)
        s3_records = S3RecordStore(calls, location)
        index = RecordTagIndex(s3_records, clock=clock, retention=retention)
        revisions = RecordLockedRevisions(s3_records)
    except Exception as error:
        calls.close()
        raise StoreUnreachable(f"cannot use {url} ({settings.endpoint or 'AWS'}): {error}") from None
    blobs = S3BlobStore(calls, location, os.path.join(data_dir, "tmp"), grace=grace)
    return StoreBackend(blobs, s3_records, index, revisions, f"{url} at {settings.endpoint or 'AWS'}", calls,
                        probe=lambda: calls("head_bucket", Bucket=location.bucket))
