"""Copy a data-dir store into a bucket, safe to re-run: `python -m nixforge.store.migrate DATA_DIR s3://bucket[/prefix]`.

Blobs are checked against their digest before they go up, and never overwrite a stored one
(If-None-Match). A record is created only where the bucket has none; a differing record already
in the bucket is kept (a replica wrote it), except pull times, which are merged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence

from attrs import define

from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.pull_times import PullTimes
from nixforge.store.records import FilesystemRecordStore
from nixforge.store.s3_blobs import S3BlobStore
from nixforge.store.s3_client import S3Calls, S3Location, S3Settings, make_client
from nixforge.store.s3_records import S3RecordStore

RECORD_PREFIXES = ("index/", "revisions/", "layers/")
PULLS = "pulls.json"
_CHUNK = 1 << 20


@define
class Copied:
    """What one run did."""

    blobs: int = 0
    blobs_present: int = 0
    blobs_corrupt: int = 0
    records: int = 0
    records_present: int = 0
    records_kept: int = 0


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def migrate(data_dir: str, source_blobs: FilesystemBlobStore, target_blobs: S3BlobStore,
            target_records: S3RecordStore) -> Copied:
    """Copy blobs, then records (so a record never names a blob not yet in the bucket). Blocks."""
    copied = Copied()
    target_blobs.refresh()
    for digest, size in source_blobs.digests():
        if target_blobs.size(digest) is not None:
            copied.blobs_present += 1
            continue
        path = source_blobs.path(digest)
        if _file_digest(path) != digest:
            copied.blobs_corrupt += 1
            print(f"skipping {digest}: its content does not match its name", file=sys.stderr)
            continue
        with open(path, "rb") as file:
            target_blobs.upload(digest, file, size)
        copied.blobs += 1
    source_records = FilesystemRecordStore(data_dir)
    for prefix in RECORD_PREFIXES:
        for key in source_records.keys(prefix):
            stored = source_records.get(key)
            if stored is None:
                continue
            existing = target_records.get(key)
            if existing is None:
                if target_records.swap(key, stored.value, None) is not None:
                    copied.records += 1
                    continue
                existing = target_records.get(key)
            if existing is not None and existing.value == stored.value:
                copied.records_present += 1
            else:
                copied.records_kept += 1
    target_pulls = PullTimes(target_records, PULLS)  # merged with the bucket's: the later time wins
    target_pulls.take(PullTimes(source_records, PULLS))
    target_pulls.save()
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; credentials and region come from boto3's usual chain."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="the data dir (NIXFORGE_DATA_DIR) of a registry that is not running")
    parser.add_argument("store", help="s3://bucket[/prefix], as NIXFORGE_STORE")
    parser.add_argument("--endpoint", default=os.environ.get("NIXFORGE_S3_ENDPOINT", ""),
                        help="S3 endpoint URL [env NIXFORGE_S3_ENDPOINT; empty: AWS]")
    options = parser.parse_args(argv)
    location = S3Location.parse(options.store)
    settings = S3Settings(endpoint=options.endpoint, pool=8)
    calls = S3Calls(make_client(settings), settings)
    try:
        source = FilesystemBlobStore(options.data_dir)
        scratch = os.path.join(options.data_dir, "tmp")
        copied = migrate(options.data_dir, source, S3BlobStore(calls, location, scratch),
                         S3RecordStore(calls, location))
    finally:
        calls.close()
    print(f"blobs: {copied.blobs} copied, {copied.blobs_present} already there, {copied.blobs_corrupt} corrupt; "
          f"records: {copied.records} copied, {copied.records_present} already there, "
          f"{copied.records_kept} differing ones kept as the bucket has them")
    return 1 if copied.blobs_corrupt else 0


if __name__ == "__main__":
    raise SystemExit(main())
