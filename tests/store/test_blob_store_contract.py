"""ICollectableBlobStore: one contract, run against memory, files and a real S3 (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import pytest
from zope.interface.verify import verifyObject

from nixforge.errors import BlobUnknown, DigestInvalid
from nixforge.store import s3_blobs
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.interfaces import IBlobStore, IBlobWriter, ICollectableBlobStore
from nixforge.store.memory import MemoryBlobStore
from nixforge.store.s3_blobs import S3BlobStore
from nixforge.store.s3_client import S3Calls, S3Location
from tests.store.backends import scratch


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobStoreContract:
    """What every blob store does; subclasses provide the `store` fixture."""

    def test_provides_the_blob_interfaces(self, store: IBlobStore) -> None:
        """The store and its writers provide their interfaces."""
        assert verifyObject(IBlobStore, store)
        writer = store.writer()
        assert verifyObject(IBlobWriter, writer)
        writer.abort()

    def test_round_trip_streamed(self, store: IBlobStore) -> None:
        """A blob written in chunks reads back whole, by every accessor."""
        chunks = [bytes([i]) * 65536 for i in range(48)]
        data = b"".join(chunks)
        writer = store.writer()
        for chunk in chunks:
            writer.write(chunk)
        assert writer.commit(sha256(data)) == (sha256(data), len(data))
        assert store.size(sha256(data)) == len(data)
        assert store.read(sha256(data)) == data
        with store.open(sha256(data)) as blob:
            assert blob.read(10) == data[:10]
            assert blob.read() == data[10:]

    def test_put_small_and_empty(self, store: IBlobStore) -> None:
        """`put` stores small documents, including the empty blob."""
        assert store.put(b'{"a": 1}') == (sha256(b'{"a": 1}'), 8)
        assert store.put(b"") == (sha256(b""), 0)
        assert store.read(sha256(b"")) == b""
        assert store.size(sha256(b"")) == 0

    def test_unknown_blob(self, store: IBlobStore) -> None:
        """Absent blobs have no size and raise BlobUnknown on reads."""
        digest = sha256(b"never stored")
        assert store.size(digest) is None
        with pytest.raises(BlobUnknown):
            store.read(digest)
        with pytest.raises(BlobUnknown):
            store.open(digest)

    @pytest.mark.parametrize(
        "digest",
        [
            "sha512:" + "ab" * 64,
            "sha256:" + "AB" * 32,
            "sha256:" + "ab" * 31,
            "sha256:" + "ab" * 32 + "\n",
            "sha256:../../etc/passwd",
            "md5:" + "ab" * 16,
            "",
        ],
    )
    def test_unsupported_digests_are_unknown(self, store: IBlobStore, digest: str) -> None:
        """sha512 and malformed digests are never found, even for stored content."""
        store.put(b"content")
        assert store.size(digest) is None
        with pytest.raises(BlobUnknown):
            store.read(digest)
        with pytest.raises(BlobUnknown):
            store.open(digest)

    def test_digest_mismatch_publishes_nothing(self, store: IBlobStore) -> None:
        """A commit against the wrong digest raises DigestInvalid and leaves nothing behind."""
        claimed = sha256(b"something else")
        writer = store.writer()
        writer.write(b"actual content")
        with pytest.raises(DigestInvalid):
            writer.commit(claimed)
        assert store.size(sha256(b"actual content")) is None
        assert store.size(claimed) is None
        writer.abort()  # harmless after a failed commit

    def test_abort_leaves_nothing(self, store: IBlobStore) -> None:
        """An aborted blob never becomes visible; aborting twice is fine; the writer is then closed."""
        writer = store.writer()
        writer.write(b"half a blob")
        writer.abort()
        writer.abort()
        assert store.size(sha256(b"half a blob")) is None
        with pytest.raises(ValueError):
            writer.write(b"more")
        with pytest.raises(ValueError):
            writer.commit()

    def test_abort_after_commit_keeps_blob(self, store: IBlobStore) -> None:
        """Aborting a committed writer does not unpublish the blob."""
        writer = store.writer()
        writer.write(b"kept")
        writer.commit()
        writer.abort()
        assert store.read(sha256(b"kept")) == b"kept"

    def test_second_identical_write_is_harmless(self, store: IBlobStore) -> None:
        """Writing an existing blob again (even concurrently) returns the same digest, content intact."""
        first, second = store.writer(), store.writer()
        first.write(b"same")
        second.write(b"same")
        assert first.commit() == (sha256(b"same"), 4)
        assert second.commit(sha256(b"same")) == (sha256(b"same"), 4)
        assert store.put(b"same") == (sha256(b"same"), 4)
        assert store.read(sha256(b"same")) == b"same"

    def test_provides_the_interfaces(self, store: ICollectableBlobStore) -> None:
        assert verifyObject(ICollectableBlobStore, store)
        writer = store.writer()
        assert verifyObject(IBlobWriter, writer)
        writer.abort()

    def test_put_read_size_open(self, store: ICollectableBlobStore) -> None:
        data = os.urandom(70_000)
        assert store.put(data) == (sha256(data), len(data))
        assert store.size(sha256(data)) == len(data)
        assert store.read(sha256(data)) == data
        with store.open(sha256(data)) as file:
            file.seek(1000)
            assert file.read(10) == data[1000:1010]

    def test_absent_and_malformed_digests(self, store: ICollectableBlobStore) -> None:
        assert store.size(sha256(b"nothing")) is None
        assert store.size("sha256:../../etc/passwd") is None
        with pytest.raises(BlobUnknown):
            store.read(sha256(b"nothing"))
        with pytest.raises(BlobUnknown):
            store.open("md5:abc")

    def test_a_wrong_digest_publishes_nothing(self, store: ICollectableBlobStore) -> None:
        writer = store.writer()
        writer.write(b"tampered")
        with pytest.raises(DigestInvalid):
            writer.commit(sha256(b"expected"))
        assert store.size(sha256(b"tampered")) is None
        assert list(store.digests()) == []

    def test_an_aborted_writer_publishes_nothing(self, store: ICollectableBlobStore) -> None:
        writer = store.writer()
        writer.write(b"half")
        writer.abort()
        writer.abort()
        assert store.size(sha256(b"half")) is None

    def test_writing_a_stored_blob_again_keeps_it(self, store: ICollectableBlobStore) -> None:
        assert store.put(b"same") == store.put(b"same")
        assert store.read(sha256(b"same")) == b"same"
        assert list(store.digests()) == [(sha256(b"same"), 4)]

    def test_digests_lists_every_blob(self, store: ICollectableBlobStore) -> None:
        stored = {store.put(bytes([n]) * n) for n in range(1, 6)}
        assert set(store.digests()) == stored

    def test_abandoned_leftovers_go_and_a_live_writer_keeps_its_bytes(self, store: ICollectableBlobStore) -> None:
        writer = store.writer()
        writer.write(b"half a layer")
        assert store.remove_abandoned() == 0  # GC at this moment: the writer is alive
        writer.write(b", then the rest")
        digest, _ = writer.commit()
        assert store.read(digest) == b"half a layer, then the rest"
        assert store.remove_abandoned() == 0

    def test_delete_spares_what_a_lease_protects(self, store: ICollectableBlobStore) -> None:
        old, _ = store.put(b"old")
        list(store.digests())  # GC lists before it deletes
        floor = store.leases.floor()
        token = store.leases.begin()
        protected, _ = store.put(b"written by a running build")
        list(store.digests())
        assert store.delete(protected, floor) is None
        assert store.delete(old, floor) == 3
        assert store.size(old) is None and store.size(protected) is not None
        store.leases.end(token)


class TestMemoryBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self) -> ICollectableBlobStore:
        return MemoryBlobStore()


class TestFilesystemBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ICollectableBlobStore:
        return FilesystemBlobStore(str(tmp_path / "store"))


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, s3_calls: S3Calls, s3_location: S3Location, tmp_path: Path) -> ICollectableBlobStore:
        return S3BlobStore(s3_calls, s3_location, scratch(tmp_path), grace=0)

    def test_a_big_blob_goes_up_in_parts_from_the_temp_file(self, s3_calls: S3Calls, s3_location: S3Location,
                                                            tmp_path: Path) -> None:
        store = S3BlobStore(s3_calls, s3_location, scratch(tmp_path), multipart_threshold=6 << 20,
                            part_size=5 << 20)
        data = os.urandom(11 << 20)
        writer = store.writer()
        for offset in range(0, len(data), 1 << 20):
            writer.write(data[offset:offset + (1 << 20)])
        assert writer.commit(sha256(data)) == (sha256(data), len(data))
        assert store.multipart_uploads == 1
        assert S3BlobStore(s3_calls, s3_location, scratch(tmp_path)).read(sha256(data)) == data
        assert os.listdir(scratch(tmp_path)) == []

    def test_a_range_streams_straight_from_the_store(self, s3_calls: S3Calls, s3_location: S3Location,
                                                      tmp_path: Path) -> None:
        store = S3BlobStore(s3_calls, s3_location, scratch(tmp_path))
        data = os.urandom(3 << 20)
        digest, _ = store.put(data)
        reader = store.stream(digest, 1000, 2 << 20)
        try:
            assert reader.read(1 << 20) + reader.read(1 << 20) == data[1000:1000 + (2 << 20)]
            assert reader.read(10) == b""
        finally:
            reader.close()
        assert store.stream(digest, 5, 0).read() == b""
        with pytest.raises(BlobUnknown):
            store.stream(sha256(b"absent"), 0, 10)
        assert os.listdir(scratch(tmp_path)) == []  # nothing copied locally

    def test_a_stored_blob_is_never_rewritten(self, s3_calls: S3Calls, s3_location: S3Location,
                                              tmp_path: Path) -> None:
        first = S3BlobStore(s3_calls, s3_location, scratch(tmp_path))
        digest, _ = first.put(b"layer")
        second = S3BlobStore(s3_calls, s3_location, scratch(tmp_path))  # another replica that raced past
        second.size = lambda digest: None  # type: ignore[method-assign]  # its check: If-None-Match decides
        with _file(tmp_path, b"LAYER") as file:  # other bytes, so a rewrite would show
            second.upload(digest, file, 5)
        assert first.read(digest) == b"layer"

    def test_on_the_reactor_size_answers_from_the_cache_that_refresh_fills(
            self, s3_calls: S3Calls, s3_location: S3Location, tmp_path: Path) -> None:
        on_reactor = [True]
        replica = S3BlobStore(s3_calls, s3_location, scratch(tmp_path), on_reactor=lambda: on_reactor[0])
        other = S3BlobStore(s3_calls, s3_location, scratch(tmp_path))
        digest, size = other.put(b"built by another replica")
        assert replica.size(digest) is None  # no request from the reactor thread
        assert replica.refresh() == 1 and replica.refresh() == 0
        assert replica.size(digest) == size
        later, later_size = other.put(b"built later")
        on_reactor[0] = False
        assert replica.size(later) == later_size  # from a worker thread: one HEAD

    def test_the_size_cache_is_bounded_and_a_forgotten_size_is_asked_for_again(
            self, s3_calls: S3Calls, s3_location: S3Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(s3_blobs, "SIZES_KEPT", 2)
        on_reactor = [False]
        store = S3BlobStore(s3_calls, s3_location, scratch(tmp_path), on_reactor=lambda: on_reactor[0])
        first, second, third = (store.put(data) for data in (b"one", b"two", b"three"))
        on_reactor[0] = True
        assert store.size(first[0]) is None  # the least recently used went
        assert store.size(second[0]) == 3 and store.size(third[0]) == 5
        on_reactor[0] = False
        assert store.size(first[0]) == 3  # one HEAD, from a worker thread
        assert len(store._sizes) == 2

    def test_a_listing_forgets_blobs_another_replica_deleted(self, s3_calls: S3Calls, s3_location: S3Location,
                                                            tmp_path: Path) -> None:
        store = S3BlobStore(s3_calls, s3_location, scratch(tmp_path))
        other = S3BlobStore(s3_calls, s3_location, scratch(tmp_path), grace=0)
        kept, _ = store.put(b"kept")
        gone, _ = store.put(b"deleted by the other replica's GC")
        assert {digest for digest, _ in store.digests()} == {kept, gone}
        list(other.digests())
        assert other.delete(gone, other.leases.floor()) is not None
        assert {digest for digest, _ in store.digests()} == {kept}
        assert set(store._first_seen) == {kept}

    def test_gc_spares_blobs_first_seen_within_the_grace_period(self, s3_calls: S3Calls, s3_location: S3Location,
                                                                tmp_path: Path) -> None:
        now = [100.0]
        store = S3BlobStore(s3_calls, s3_location, scratch(tmp_path), grace=60, monotonic=lambda: now[0])
        other = S3BlobStore(s3_calls, s3_location, scratch(tmp_path))
        digest, _ = other.put(b"another replica's unrecorded blob")
        list(store.digests())
        assert store.delete(digest, store.leases.floor()) is None
        now[0] += 61
        assert store.delete(digest, store.leases.floor()) == len(b"another replica's unrecorded blob")


def _file(tmp_path: Path, data: bytes) -> BinaryIO:
    """A file holding `data`."""
    path = tmp_path / "upload"
    path.write_bytes(data)
    return path.open("rb")
