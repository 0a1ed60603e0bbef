"""ITagIndex, ILockedRevisions and the pull times: one contract each, on memory, files and a real S3.

The record-store-backed implementations also share one store between two instances (two replicas).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from nixforge.store.durable_index import FilesystemTagIndex, RecordTagIndex
from nixforge.store.interfaces import ILockedRevisions, IRecordStore, IRetainedIndex, ITagIndex, TagRecord
from nixforge.store.locked_revisions import MemoryLockedRevisions, RecordLockedRevisions
from nixforge.store.pull_times import PullTimes
from nixforge.store.records import FilesystemRecordStore, MemoryRecordStore, encode_json
from nixforge.store.s3_client import S3Calls, S3Location
from nixforge.store.s3_records import S3RecordStore
from nixforge.store.tag_index import MemoryTagIndex
from nixforge.testing import RacingRecordStore


def digest(seed: str) -> str:
    return "sha256:" + (seed.encode().hex() * 64)[:64]


def record(name: str, tag: str, seed: str = "a", built_at: float = 1.5, **extra: object) -> TagRecord:
    return TagRecord(name=name, tag=tag, oci_digest=digest("oci" + seed), docker_digest=digest("docker" + seed),
                     built_at=built_at, source="path:/flake#" + name, **extra)


class TagIndexContract:
    """What every tag index does; subclasses provide `index`."""

    def test_provides_the_interfaces(self, index: ITagIndex) -> None:
        assert verifyObject(ITagIndex, index) and verifyObject(IRetainedIndex, index)

    def test_empty(self, index: ITagIndex) -> None:
        assert index.get("hello", "latest") is None
        assert index.tags("hello") == [] and index.names() == []
        assert not index.has_manifest("hello", digest("ocia"))

    def test_put_get(self, index: ITagIndex) -> None:
        hello = record("hello", "latest", immutable=True)
        index.put(hello)
        assert index.get("hello", "latest") == hello
        assert index.get("hello", "v1") is None and index.get("other", "latest") is None

    def test_tags_and_names_sorted(self, index: ITagIndex) -> None:
        for name, tag in [("zsh", "latest"), ("apps/web", "v2"), ("hello", "v2"), ("hello", "latest"),
                          ("hello", "V1"), ("hello", "latest")]:
            index.put(record(name, tag))
        assert index.names() == ["apps/web", "hello", "zsh"]
        assert index.tags("hello") == ["V1", "latest", "v2"]

    def test_has_manifest_keeps_history(self, index: ITagIndex) -> None:
        index.put(record("hello", "latest", seed="1"))
        index.put(record("hello", "latest", seed="2", built_at=9.0))
        for seed in "12":
            assert index.has_manifest("hello", digest("oci" + seed))
            assert index.has_manifest("hello", digest("docker" + seed))
        assert not index.has_manifest("hello", digest("oci3"))
        assert not index.has_manifest("other", digest("oci1"))

    def test_replace_only_replaces_the_current_record(self, index: ITagIndex) -> None:
        old, new = record("hello", "latest", seed="1"), record("hello", "latest", seed="2", built_at=2)
        assert not index.replace(old, new)  # nothing current
        index.put(old)
        assert index.replace(old, new)
        assert index.get("hello", "latest") == new
        assert not index.replace(old, record("hello", "latest", seed="3", built_at=3))
        assert index.get("hello", "latest") == new

    def test_concurrent_replaces_of_one_record_let_one_win(self, index: ITagIndex) -> None:
        old = record("hello", "latest", seed="0")
        index.put(old)
        results: dict[TagRecord, bool] = {}
        candidates = [record("hello", "latest", seed=str(n), built_at=2 + n) for n in range(1, 9)]

        def replace(candidate: TagRecord) -> None:
            results[candidate] = index.replace(old, candidate)

        threads = [threading.Thread(target=replace, args=(c,)) for c in candidates]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        [winner] = [candidate for candidate, won in results.items() if won]
        assert index.get("hello", "latest") == winner

    def test_remove_forgets_the_record_and_its_history(self, index: IRetainedIndex) -> None:
        index.put(record("hello", "latest", seed="1"))
        current = record("hello", "latest", seed="2", built_at=2)
        index.put(current)
        assert not index.remove(record("hello", "latest", seed="9"))
        assert index.remove(current)
        assert index.get("hello", "latest") is None and index.records() == []
        assert not index.has_manifest("hello", digest("oci1"))


class TestMemoryTagIndex(TagIndexContract):
    @pytest.fixture
    def index(self) -> ITagIndex:
        return MemoryTagIndex()


class TestFilesystemTagIndex(TagIndexContract):
    @pytest.fixture
    def index(self, tmp_path: Path) -> ITagIndex:
        return FilesystemTagIndex(str(tmp_path))


class SharedRecordsContract:
    """Two instances on one record store (two replicas); subclasses provide `records`."""

    def test_a_second_replica_reads_what_the_first_wrote(self, records: IRecordStore) -> None:
        first = RecordTagIndex(records)
        first.put(record("hello", "latest", seed="1"))
        first.put(record("hello", "latest", seed="2", built_at=2))
        second = RecordTagIndex(records)
        assert second.get("hello", "latest") == record("hello", "latest", seed="2", built_at=2)
        assert second.has_manifest("hello", digest("oci1"))

    def test_refresh_takes_what_another_replica_wrote_and_forgets_what_it_removed(
            self, records: IRecordStore) -> None:
        one, two = RecordTagIndex(records), RecordTagIndex(records)
        hello = record("hello", "latest", seed="1")
        one.put(hello)
        assert two.get("hello", "latest") is None
        assert two.refresh() == 1 and two.get("hello", "latest") == hello
        assert two.refresh() == 0  # nothing changed: no record read again
        newer = record("hello", "latest", seed="2", built_at=2)
        one.put(newer)
        assert two.refresh() == 1 and two.get("hello", "latest") == newer
        assert two.has_manifest("hello", digest("oci1"))  # the superseded digest came along
        assert one.remove(newer)
        assert two.refresh() == 1 and two.get("hello", "latest") is None and two.names() == []

    def test_an_older_build_never_replaces_a_newer_record(self, records: IRecordStore) -> None:
        slow, fast = RecordTagIndex(records), RecordTagIndex(records)
        fast.put(record("hello", "latest", seed="new", built_at=20))
        slow.put(record("hello", "latest", seed="old", built_at=10))
        assert RecordTagIndex(records).get("hello", "latest") == record("hello", "latest", seed="new", built_at=20)
        assert slow.get("hello", "latest") == record("hello", "latest", seed="new", built_at=20)

    def test_replace_fails_when_another_replica_changed_the_record(self, records: IRecordStore) -> None:
        one = RecordTagIndex(records)
        old = record("hello", "latest", seed="1")
        one.put(old)
        two = RecordTagIndex(records)
        one.put(record("hello", "latest", seed="2", built_at=5))
        assert not two.replace(old, record("hello", "latest", seed="3", built_at=6))
        assert RecordTagIndex(records).get("hello", "latest") == record("hello", "latest", seed="2", built_at=5)

    def test_a_write_that_loses_a_race_retries_and_keeps_both_updates(self, records: IRecordStore) -> None:
        racing = RacingRecordStore(records)
        revisions = RecordLockedRevisions(racing)
        racing.race = lambda inner: RecordLockedRevisions(inner).record("github:o/r", "a" * 40, "main")
        revisions.record("github:o/r", "a" * 40, "latest")
        assert racing.conflicts == 1
        assert RecordLockedRevisions(records).refs("github:o/r", "a" * 40) == {"latest", "main"}

    def test_pull_times_of_every_replica_count(self, records: IRecordStore) -> None:
        one, two = PullTimes(records), PullTimes(records)
        one.record("a", "latest", 10.0)
        two.record("b", "latest", 20.0)
        two.record("a", "latest", 5.0)
        assert one.save() and two.save()
        merged = PullTimes(records)
        assert (merged.get("a", "latest"), merged.get("b", "latest")) == (10.0, 20.0)
        one.forget("a", "latest")
        one.save()
        assert PullTimes(records).get("a", "latest") is None

    def test_locked_revisions(self, records: IRecordStore) -> None:
        revisions = RecordLockedRevisions(records)
        assert verifyObject(ILockedRevisions, revisions) and verifyObject(ILockedRevisions, MemoryLockedRevisions())
        revisions.record("github:o/r", "b" * 40, "v1")
        revisions.record("github:o/r", "b" * 40, "v1")
        assert RecordLockedRevisions(records).refs("github:o/r", "b" * 40) == {"v1"}
        [key] = records.keys("revisions/")
        stored = json.loads(records.get(key).value)  # type: ignore[union-attr]
        assert stored == {"format": 1, "flake": "github:o/r", "revision": "b" * 40, "refs": ["v1"]}

    def test_a_bad_record_is_skipped(self, records: IRecordStore) -> None:
        RecordTagIndex(records).put(record("hello", "latest"))
        records.put("index/r-" + "0" * 64 + ".json", encode_json({"format": 1, "name": "x"}))
        assert RecordTagIndex(records).names() == ["hello"]


class TestMemoryShared(SharedRecordsContract):
    @pytest.fixture
    def records(self) -> IRecordStore:
        return MemoryRecordStore()


class TestFilesystemShared(SharedRecordsContract):
    @pytest.fixture
    def records(self, tmp_path: Path) -> IRecordStore:
        return FilesystemRecordStore(str(tmp_path))


class TestS3Shared(SharedRecordsContract):
    @pytest.fixture
    def records(self, s3_calls: S3Calls, s3_location: S3Location) -> IRecordStore:
        return S3RecordStore(s3_calls, s3_location)


class TestS3TagIndex(TagIndexContract):
    @pytest.fixture
    def index(self, s3_calls: S3Calls, s3_location: S3Location) -> ITagIndex:
        return RecordTagIndex(S3RecordStore(s3_calls, s3_location))
