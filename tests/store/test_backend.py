"""open_store: the data dir by default, a bucket with s3://, one line when the bucket is unusable."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from nixforge.store.backend import READINESS_KEY, StoreUnreachable, open_store, read_readiness_object
from nixforge.store.durable_index import FilesystemTagIndex
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.interfaces import TagRecord
from nixforge.store.records import MemoryRecordStore
from nixforge.store.s3_blobs import S3BlobStore
from nixforge.store.s3_client import S3Location, S3Settings
from tests.s3_server import SeaweedServer

RECORD = TagRecord("hello", "latest", "sha256:" + "a" * 64, "sha256:" + "b" * 64, 1.0, "path:/f")


def test_empty_means_the_data_dir(tmp_path: Path) -> None:
    backend = open_store("", str(tmp_path), time.time, 3600)
    assert isinstance(backend.blobs, FilesystemBlobStore) and isinstance(backend.index, FilesystemTagIndex)
    backend.index.put(RECORD)
    assert (tmp_path / "index").is_dir() and backend.records.keys("index/") != []
    backend.close()


def test_a_bucket_holds_everything_and_a_new_replica_reads_it(
        s3_server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket(f"backend-{uuid.uuid4().hex[:8]}")
    settings = S3Settings(endpoint=s3_server.endpoint, pool=4)
    first = open_store(f"s3://{bucket}/one", str(tmp_path / "a"), time.time, 3600, settings)
    assert isinstance(first.blobs, S3BlobStore)
    digest, _ = first.blobs.put(b"config")
    first.index.put(RECORD)
    first.revisions.record("github:o/r", "c" * 40, "latest")
    first.close()
    second = open_store(f"s3://{bucket}/one", str(tmp_path / "b"), time.time, 3600, settings)
    assert second.index.get("hello", "latest") == RECORD
    assert second.revisions.refs("github:o/r", "c" * 40) == {"latest"}
    assert second.blobs.read(digest) == b"config"
    assert not (tmp_path / "b" / "index").exists()  # nothing durable on the replica's disk
    other_prefix = open_store(f"s3://{bucket}/two", str(tmp_path / "c"), time.time, 3600, settings)
    assert other_prefix.index.names() == []
    second.close()
    other_prefix.close()


def test_a_missing_bucket_is_one_clear_error(s3_server: SeaweedServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StoreUnreachable, match="s3://no-such-bucket-here"):
        open_store("s3://no-such-bucket-here", str(tmp_path), time.time, 3600,
                   S3Settings(endpoint=s3_server.endpoint, pool=2))


def test_an_unreachable_store_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(StoreUnreachable, match="unreachable"):
        open_store("s3://bucket", str(tmp_path), time.time, 3600,
                   S3Settings(endpoint="http://127.0.0.1:9", pool=2, connect_timeout=1, read_timeout=1))


def test_location_parsing() -> None:
    assert S3Location.parse("s3://bucket") == S3Location("bucket", "")
    assert S3Location.parse("s3://bucket/a/b/") == S3Location("bucket", "a/b/")
    for bad in ["bucket", "http://bucket", "s3://", "s3://b?x=1"]:
        with pytest.raises(ValueError):
            S3Location.parse(bad)


def test_the_readiness_probe_reads_an_object_back(s3_server: SeaweedServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket(f"ready-{uuid.uuid4().hex[:8]}")
    backend = open_store(f"s3://{bucket}/r", str(tmp_path), time.time, 3600,
                         S3Settings(endpoint=s3_server.endpoint, pool=2))
    try:
        assert backend.probe is not None
        backend.probe()
        assert backend.records.get(READINESS_KEY) is not None  # written once, read by every check
        backend.probe()
    finally:
        backend.close()


class UnreadableRecords(MemoryRecordStore):
    """The bucket answers, the servers holding objects do not: every read comes back empty."""

    def get(self, key: str) -> None:
        return None


def test_the_readiness_probe_fails_when_objects_cannot_be_read() -> None:
    with pytest.raises(StoreUnreachable, match="cannot be read back"):
        read_readiness_object(UnreadableRecords())
    records = MemoryRecordStore()
    read_readiness_object(records)
    assert records.get(READINESS_KEY) is not None
