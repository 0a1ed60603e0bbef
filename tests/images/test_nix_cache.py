"""ServedClosures and NixCache on memory stores: what is served, why not, and narinfos with no Nix run."""

from __future__ import annotations

import base64
import hashlib
import lzma
from datetime import datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from nixforge.errors import BlobUnknown
from nixforge.images.nix_cache import NO_KEY, NOT_SERVED, NixCache
from nixforge.images.policy import AccessPolicy
from nixforge.images.served_closures import ServedClosures
from nixforge.nix.client import NixClient
from nixforge.nix.commands import StorePathInfo
from nixforge.nix.narinfo import nar_file_name, parse_narinfo
from nixforge.nix.signing import CacheKey
from nixforge.oci import media_types as mt
from nixforge.oci.documents import ImageManifests, ManifestDocument
from nixforge.oci.referrers import store_sbom
from nixforge.oci.sbom import PackageFacts
from nixforge.store.interfaces import TagRecord
from nixforge.store.locked_revisions import MemoryLockedRevisions
from nixforge.store.memory import MemoryBlobStore
from nixforge.store.narinfo_records import INarRecords, NarRecord, NarRecords
from nixforge.store.tag_index import MemoryTagIndex

TOP = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-top"
LIB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-lib"
OTHER = "/nix/store/cccccccccccccccccccccccccccccccc-other"
HASH = "sha256:" + "0" * 64


def now(function: Any, *args: Any) -> Deferred[Any]:
    return succeed(function(*args))


def outcome(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def image(store: MemoryBlobStore, index: MemoryTagIndex, name: str, paths: list[str]) -> ImageManifests:
    """Store a (fake) image with the SBOM of `paths` (the first is the root) and index it as name:latest."""
    oci = ManifestDocument(mt.OCI_MANIFEST, f'{{"name":"{name}"}}'.encode())
    docker = ManifestDocument(mt.DOCKER_MANIFEST, f'{{"name":"{name}","d":1}}'.encode())
    closure = [StorePathInfo(path, 1, tuple(paths[1:]) if path == paths[0] else (), HASH) for path in paths]
    manifests = store_sbom(store, ImageManifests(oci, docker), closure, paths[0], PackageFacts(), name,
                           datetime(2026, 1, 1))
    index.put(TagRecord(name, "latest", oci.digest, docker.digest, 0.0, "src",
                        manifests=tuple(doc.digest for doc in manifests.related())))
    return manifests


@pytest.fixture
def store() -> MemoryBlobStore:
    return MemoryBlobStore()


@pytest.fixture
def index(store: MemoryBlobStore) -> MemoryTagIndex:
    tags = MemoryTagIndex()
    image(store, tags, "web", [TOP, LIB])
    image(store, tags, "tool", [OTHER, LIB])
    return tags


def served(store: MemoryBlobStore, index: MemoryTagIndex, packages: tuple[str, ...] = ("*",)) -> ServedClosures:
    closures = ServedClosures(index, store, AccessPolicy("path:/f", MemoryLockedRevisions(), packages=packages), now)
    outcome(Deferred.fromCoroutine(closures.refresh()))
    return closures


def test_every_path_of_every_served_closure_and_who_needs_it(store: MemoryBlobStore, index: MemoryTagIndex) -> None:
    closures = served(store, index)
    assert closures.names_serving(LIB) == {"web", "tool"}
    assert closures.names_serving(TOP) == {"web"}
    assert closures.path_of_hash("c" * 32) == OTHER
    assert closures.path_of_hash("d" * 32) is None


def test_a_refused_package_serves_nothing_only_it_needs(store: MemoryBlobStore, index: MemoryTagIndex) -> None:
    closures = served(store, index, packages=("web",))
    assert closures.path_of_hash("c" * 32) is None
    assert closures.names_serving(LIB) == {"web"}


def test_a_record_gone_from_the_index_drops_out(store: MemoryBlobStore, index: MemoryTagIndex) -> None:
    closures = served(store, index)
    record = index.get("tool", "latest")
    assert record is not None and index.remove(record)
    outcome(Deferred.fromCoroutine(closures.refresh()))
    assert closures.path_of_hash("c" * 32) is None and closures.names_serving(LIB) == {"web"}


def test_the_closure_behind_a_manifest(store: MemoryBlobStore) -> None:
    tags = MemoryTagIndex()
    manifests = image(store, tags, "web", [TOP, LIB])
    closure = served(store, tags).closure_of(manifests.oci.digest)
    assert closure is not None and closure.root == TOP and closure.paths == {TOP, LIB}


def key() -> CacheKey:
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return CacheKey.parse("test-1:" + base64.b64encode(seed + public).decode())


def cache(store: MemoryBlobStore, index: MemoryTagIndex, records: NarRecords,
          signing: CacheKey | None, packages: tuple[str, ...] = ("*",)) -> NixCache:
    # A nix binary that does not exist: any Nix run fails the test.
    nix = NixClient(Clock(), 60, nix_binary="/nonexistent/nix")
    return NixCache(served(store, index, packages), nix, store, records, signing, now, Clock())


def test_without_a_key_everything_says_why(store: MemoryBlobStore, index: MemoryTagIndex, tmp_path: Any) -> None:
    nix_cache = cache(store, index, NarRecords.in_directory(str(tmp_path)), None)
    for call in (nix_cache.cache_info, lambda: outcome(Deferred.fromCoroutine(nix_cache.narinfo("a" * 32)))):
        with pytest.raises(BlobUnknown) as caught:
            call()
        assert caught.value.message == NO_KEY


def test_gc_keeps_every_recorded_nar_until_the_closures_were_read(store: MemoryBlobStore, index: MemoryTagIndex,
                                                                  tmp_path: Any) -> None:
    records = NarRecords.in_directory(str(tmp_path))
    records.put("d" * 32, NarRecord("/nix/store/" + "d" * 32 + "-gone", "sha256:" + "1" * 64, 1, "0" * 64, 1, ()))
    closures = ServedClosures(index, store, AccessPolicy("path:/f", MemoryLockedRevisions()), now)
    nix_cache = NixCache(closures, NixClient(Clock(), 60, nix_binary="/nonexistent/nix"), store, records, key(), now,
                         Clock())
    assert nix_cache.live_blobs() == ["sha256:" + "1" * 64]
    outcome(Deferred.fromCoroutine(closures.refresh()))
    assert nix_cache.live_blobs() == []


def test_a_stored_nar_is_answered_without_nix(store: MemoryBlobStore, index: MemoryTagIndex, tmp_path: Any) -> None:
    nar = b"nar bytes"
    digest, size = store.put(lzma.compress(nar))
    record = NarRecord(TOP, digest, size, hashlib.sha256(nar).hexdigest(), len(nar), (LIB, TOP), None)
    NarRecords.in_directory(str(tmp_path)).put("a" * 32, record)
    signing = key()
    nix_cache = cache(store, index, NarRecords.in_directory(str(tmp_path)), signing)  # read back from disk
    fields = parse_narinfo(outcome(Deferred.fromCoroutine(nix_cache.narinfo("a" * 32))).decode())
    assert fields["StorePath"] == TOP and fields["Sig"].startswith("test-1:")
    assert fields["FileSize"] == str(size) and fields["NarSize"] == str(len(nar))
    blob = outcome(Deferred.fromCoroutine(nix_cache.nar(nar_file_name(bytes.fromhex(digest[7:])))))
    assert blob.size == size and blob.open().read() == store.read(digest)
    assert nix_cache.live_blobs() == [digest]  # GC keeps it

    # Once `web` is refused, the same NAR is 404.
    refused = cache(store, index, NarRecords.in_directory(str(tmp_path)), signing, packages=("tool",))
    assert refused.live_blobs() == []  # GC may take it
    for coroutine in (refused.narinfo("a" * 32), refused.nar(nar_file_name(bytes.fromhex(digest[7:])))):
        with pytest.raises(BlobUnknown) as caught:
            outcome(Deferred.fromCoroutine(coroutine))
        assert caught.value.message == NOT_SERVED


def test_unserved_and_unknown_files_are_404(store: MemoryBlobStore, index: MemoryTagIndex, tmp_path: Any) -> None:
    nix_cache = cache(store, index, NarRecords.in_directory(str(tmp_path)), key())
    with pytest.raises(BlobUnknown) as caught:
        outcome(Deferred.fromCoroutine(nix_cache.narinfo("d" * 32)))
    assert caught.value.message == NOT_SERVED
    for name in ("x.nar.xz", nar_file_name(b"\1" * 32)):
        with pytest.raises(BlobUnknown):
            outcome(Deferred.fromCoroutine(nix_cache.nar(name)))


def test_the_filesystem_records_keep_their_contract(tmp_path: Any) -> None:
    records = NarRecords.in_directory(str(tmp_path))
    assert verifyObject(INarRecords, records)
    record = NarRecord(TOP, "sha256:" + "2" * 64, 5, "3" * 64, 9, (LIB,), "/nix/store/" + "e" * 32 + "-x.drv")
    records.put("a" * 32, record)
    with pytest.raises(ValueError):
        records.put("not-a-hash", record)
    again = NarRecords.in_directory(str(tmp_path))
    assert again.get("a" * 32) == record and again.hash_of_file(record.file_digest) == "a" * 32
    assert again.items() == [("a" * 32, record)]


def test_signed_narinfos_kept_in_memory_are_bounded(store: MemoryBlobStore, index: MemoryTagIndex, tmp_path: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import nixforge.images.nix_cache as nix_cache_module

    monkeypatch.setattr(nix_cache_module, "SIGNED_KEPT", 2)
    nix_cache = cache(store, index, NarRecords.in_directory(str(tmp_path)), key())
    texts = []
    for n in range(3):
        nar = b"nar %d" % n
        digest, size = store.put(lzma.compress(nar))
        record = NarRecord(TOP, digest, size, hashlib.sha256(nar).hexdigest(), len(nar), (LIB, TOP), None)
        texts.append(nix_cache._sign(f"{n}" * 32, record))
    assert len(texts) == 3 and len(nix_cache._signed) == 2
    assert [memo[0] for memo in nix_cache._signed] == ["1" * 32, "2" * 32]  # the oldest went first
