"""IRecordStore: one contract, run against memory, files and a real S3 (SeaweedFS)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from nixforge.store.interfaces import IRecordStore
from nixforge.store.records import FilesystemRecordStore, MemoryRecordStore, update_json
from nixforge.store.s3_client import S3Calls, S3Location
from nixforge.store.s3_records import S3RecordStore


class RecordStoreContract:
    """What every record store does; subclasses provide the `records` fixture."""

    def test_provides_the_interface(self, records: IRecordStore) -> None:
        assert verifyObject(IRecordStore, records)

    def test_absent_records(self, records: IRecordStore) -> None:
        assert records.get("index/r-x.json") is None
        assert records.keys("index/") == []
        assert not records.delete("index/r-x.json")

    def test_put_then_get_returns_the_bytes_and_the_version(self, records: IRecordStore) -> None:
        version = records.put("a/b.json", b'{"v": 1}')
        stored = records.get("a/b.json")
        assert stored is not None and stored.value == b'{"v": 1}' and stored.version == version
        other = records.put("a/b.json", b'{"v": 2}')
        assert other != version and records.get("a/b.json").value == b'{"v": 2}'  # type: ignore[union-attr]

    def test_swap_from_nothing_creates_once(self, records: IRecordStore) -> None:
        first = records.swap("lease.json", b"one", None)
        assert first is not None
        assert records.swap("lease.json", b"two", None) is None
        assert records.get("lease.json").value == b"one"  # type: ignore[union-attr]

    def test_swap_needs_the_current_version(self, records: IRecordStore) -> None:
        old = records.put("k.json", b"1")
        new = records.swap("k.json", b"2", old)
        assert new is not None
        assert records.swap("k.json", b"3", old) is None  # stale
        assert records.get("k.json").value == b"2"  # type: ignore[union-attr]
        assert records.swap("missing.json", b"x", new) is None  # a version of nothing

    def test_delete_with_a_version_only_deletes_that_version(self, records: IRecordStore) -> None:
        old = records.put("k.json", b"1")
        records.put("k.json", b"2")
        assert not records.delete("k.json", old)
        assert records.get("k.json") is not None
        assert records.delete("k.json", records.get("k.json").version)  # type: ignore[union-attr]
        assert records.get("k.json") is None

    def test_keys_lists_a_prefix_sorted(self, records: IRecordStore) -> None:
        for key in ["index/r-b.json", "index/r-a.json", "index/d-a.json", "layers/0.json", "pulls.json"]:
            records.put(key, b"{}")
        assert records.keys("index/") == ["index/d-a.json", "index/r-a.json", "index/r-b.json"]
        assert records.keys("index/r-") == ["index/r-a.json", "index/r-b.json"]
        assert records.keys("pulls") == ["pulls.json"]

    def test_versions_lists_what_get_returns(self, records: IRecordStore) -> None:
        records.put("index/r-a.json", b"1")
        records.put("index/r-b.json", b"2")
        records.put("other.json", b"3")
        versions = records.versions("index/")
        assert versions == {key: records.get(key).version for key in ["index/r-a.json", "index/r-b.json"]}  # type: ignore[union-attr]

    @pytest.mark.parametrize("key", ["", "/abs", "a/../b", ".hidden", "a//b", "a/.tmp-x", "sp ace"])
    def test_bad_keys_are_refused(self, records: IRecordStore, key: str) -> None:
        with pytest.raises(ValueError):
            records.put(key, b"x")

    def test_concurrent_compare_and_swap_loses_no_update(self, records: IRecordStore) -> None:
        def increment() -> None:
            for _ in range(5):
                update_json(records, "counter.json", lambda doc: {"n": (doc or {"n": 0})["n"] + 1})

        threads = [threading.Thread(target=increment) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert json.loads(records.get("counter.json").value) == {"n": 30}  # type: ignore[union-attr]


class TestMemoryRecordStore(RecordStoreContract):
    @pytest.fixture
    def records(self) -> IRecordStore:
        return MemoryRecordStore()


class TestFilesystemRecordStore(RecordStoreContract):
    @pytest.fixture
    def records(self, tmp_path: Path) -> IRecordStore:
        return FilesystemRecordStore(str(tmp_path / "records"))

    def test_a_crash_leaves_temporaries_that_are_not_records_and_are_removed(self, tmp_path: Path) -> None:
        records = FilesystemRecordStore(str(tmp_path))
        records.put("index/r-a.json", b"{}")
        (tmp_path / "index" / ".tmp-half").write_bytes(b"{")
        assert records.keys("index/") == ["index/r-a.json"]
        assert records.remove_temporaries(["index"]) == 1
        assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["r-a.json"]


class TestS3RecordStore(RecordStoreContract):
    @pytest.fixture
    def records(self, s3_calls: S3Calls, s3_location: S3Location) -> IRecordStore:
        return S3RecordStore(s3_calls, s3_location)

    def test_records_live_under_the_prefix(self, s3_calls: S3Calls, s3_location: S3Location) -> None:
        S3RecordStore(s3_calls, s3_location).put("index/r-a.json", b"{}")
        listed = s3_calls("list_objects_v2", Bucket=s3_location.bucket, Prefix=s3_location.prefix)
        assert [item["Key"] for item in listed["Contents"]] == [f"{s3_location.prefix}records/index/r-a.json"]
