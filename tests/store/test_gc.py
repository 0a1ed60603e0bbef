"""GC over a real filesystem store: retention, the cap, leases, open readers, the journal, ENOSPC."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from nixforge.errors import StoreFull
from nixforge.oci.documents import ImageManifests, LayerBlob, build_manifests
from nixforge.oci.manifest_references import ManifestReferences
from nixforge.store.durable_index import FilesystemTagIndex
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.gc import GarbageCollector
from nixforge.store.gc_journal import GcJournal, GcPlan
from nixforge.store.interfaces import TagRecord
from nixforge.store.layer_cache import LayerCache, layer_key
from nixforge.store.pull_times import PullTimes
from nixforge.store.records import FilesystemRecordStore
from nixforge.store.tag_index import HISTORY_LIMIT

DAY = 86400.0


class Now:
    """A settable clock for the index's retention window."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Fixture:
    """A store, an index, a layer cache, pull times and a collector sharing one data dir."""

    def __init__(self, root: Path, max_size: int | None = None, clock: Now | None = None) -> None:
        self.root = root
        self.clock = clock or Now()
        self.store = FilesystemBlobStore(str(root))
        self.index = FilesystemTagIndex(str(root), clock=self.clock, retention=7 * DAY)
        self.cache = LayerCache.in_directory(str(root / "layers"))
        self.pulls = PullTimes.in_file(str(root / "pulls.json"))
        self.journal = GcJournal(FilesystemRecordStore(str(root)))
        self.gc = GarbageCollector(self.store, self.index, self.cache, self.pulls, self.journal,
                                   ManifestReferences(), max_size=max_size)

    def image(self, *layer_payloads: bytes) -> ImageManifests:
        """Store an image whose layers hold these bytes (each cached under its payload as key)."""
        layers = []
        for payload in layer_payloads:
            digest, size = self.store.put(payload)
            blob = LayerBlob(digest, size, digest)
            self.cache.put(layer_key([payload.decode()]), blob)
            layers.append(blob)
        config = json.dumps({"layers": [p.decode() for p in layer_payloads]}).encode()
        config_digest, config_size = self.store.put(config)
        manifests = build_manifests(config_digest, config_size, layers)
        self.store.put(manifests.oci.body)
        self.store.put(manifests.docker.body)
        return manifests

    def tag(self, name: str, manifests: ImageManifests, tag: str = "latest") -> TagRecord:
        record = TagRecord(name, tag, manifests.oci.digest, manifests.docker.digest, self.clock(), "path:/f")
        self.index.put(record)
        return record

    def blobs(self) -> set[str]:
        return {digest for digest, _ in self.store.digests()}

    def total(self) -> int:
        return sum(size for _, size in self.store.digests())


def blobs_of(manifests: ImageManifests) -> set[str]:
    """Every blob an image consists of: both manifests, the config and the layers."""
    oci = json.loads(manifests.oci.body)
    return {manifests.oci.digest, manifests.docker.digest, oci["config"]["digest"],
            *(layer["digest"] for layer in oci["layers"])}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_unreferenced_blobs_go_and_referenced_ones_stay(tmp_path: Path) -> None:
    """Mark: records → manifests → config and layers; sweep: everything else, cache entries too."""
    f = Fixture(tmp_path)
    kept = f.image(b"layer-a", b"layer-shared")
    f.tag("a", kept)
    orphan = f.image(b"layer-orphan", b"layer-shared")  # stored, but no record names it
    result = f.gc.collect()
    assert f.blobs() == blobs_of(kept)
    assert result is not None
    assert result.blobs_deleted == len(blobs_of(orphan) - blobs_of(kept))
    assert result.bytes_freed > 0 and result.store_bytes == f.total()
    assert f.cache.get(layer_key(["layer-orphan"]), f.store) is None
    assert not os.path.exists(tmp_path / "layers" / (layer_key(["layer-orphan"]) + ".json"))
    assert os.path.exists(tmp_path / "layers" / (layer_key(["layer-shared"]) + ".json"))
    assert not f.gc.journal.read() is not None


def test_cap_evicts_least_recently_pulled_images_first(tmp_path: Path) -> None:
    """Over the cap, the image pulled longest ago goes (record and unique blobs), shared layers stay."""
    big = [bytes([65 + i]) * 40_000 for i in range(3)]
    f = Fixture(tmp_path)
    images = {name: f.image(payload, b"shared-layer") for name, payload in zip("abc", big, strict=True)}
    records = {name: f.tag(name, manifests) for name, manifests in images.items()}
    f.pulls.record("a", "latest", f.clock() + 300)
    f.pulls.record("b", "latest", f.clock() + 100)  # pulled longest ago
    f.pulls.record("c", "latest", f.clock() + 200)
    cap = f.total() - 30_000
    f.gc.max_size = cap
    assert f.gc.over_cap()
    result = f.gc.collect()
    assert result is not None and result.images_evicted == 1
    assert f.index.get("b", "latest") is None
    assert f.index.get("a", "latest") == records["a"] and f.index.get("c", "latest") == records["c"]
    assert f.blobs() == blobs_of(images["a"]) | blobs_of(images["c"])
    assert f.total() <= cap and not f.gc.over_cap()
    assert f.pulls.get("b", "latest") is None
    assert f.gc.collect("after build", only_over_cap=True) is None


def test_the_most_recent_image_is_kept_even_alone_over_the_cap(tmp_path: Path) -> None:
    f = Fixture(tmp_path, max_size=10)
    old = f.tag("old", f.image(b"x" * 5000))
    f.clock.now += 10
    new = f.tag("new", f.image(b"y" * 5000))
    f.gc.collect()
    assert f.index.get("old", "latest") is None and f.index.get("new", "latest") == new
    assert old.oci_digest not in f.blobs()


def test_superseded_digests_resolve_for_the_retention_window_then_go(tmp_path: Path) -> None:
    """A pinned digest keeps resolving, with all its blobs, for the window; then it is forgotten."""
    f = Fixture(tmp_path)
    first = f.image(b"v1-layer")
    f.tag("app", first)
    f.clock.now += 60
    second = f.image(b"v2-layer")
    f.tag("app", second)
    f.clock.now += 6 * DAY
    f.gc.collect()
    assert f.index.has_manifest("app", first.oci.digest)
    assert blobs_of(first) <= f.blobs()
    f.clock.now += 2 * DAY
    assert not f.index.has_manifest("app", first.oci.digest)
    result = f.gc.collect()
    assert result is not None and result.digests_forgotten == 1
    assert f.blobs() == blobs_of(second)
    assert FilesystemTagIndex(str(tmp_path), clock=f.clock).has_manifest("app", second.docker.digest)
    assert not os.path.exists(f.index.history_path("app"))


def test_history_is_bounded_by_count_and_stays_small(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    for i in range(HISTORY_LIMIT + 40):
        f.clock.now += 1
        f.index.put(TagRecord("app", "latest", sha256(b"o%d" % i), sha256(b"d%d" % i), f.clock(), "s"))
    saved = json.loads(Path(f.index.history_path("app")).read_text())
    assert len(saved["superseded"]) == HISTORY_LIMIT
    newest = HISTORY_LIMIT + 38
    assert f.index.has_manifest("app", sha256(b"o%d" % newest))
    assert not f.index.has_manifest("app", sha256(b"o0"))
    again = FilesystemTagIndex(str(tmp_path), clock=f.clock)
    assert again.has_manifest("app", sha256(b"d%d" % newest)) and not again.has_manifest("app", sha256(b"d1"))


def test_a_build_lease_protects_blobs_written_or_reused_before_the_record_exists(tmp_path: Path) -> None:
    """Written during a lease, or found present (a layer-cache hit): GC spares them until it ends."""
    f = Fixture(tmp_path)
    old_layer, _ = f.store.put(b"layer stored by an earlier, now unreferenced image")
    lease = f.store.leases.begin()
    new_blob, _ = f.store.put(b"layer the running build just wrote")
    assert f.store.size(old_layer) is not None  # the build's layer-cache hit
    f.gc.collect()
    assert {old_layer, new_blob} <= f.blobs()
    f.store.leases.end(lease)
    f.gc.collect()
    assert not {old_layer, new_blob} & f.blobs()


def test_a_lease_that_ends_during_a_run_still_protects_its_blobs(tmp_path: Path) -> None:
    """The floor is taken when the run starts: a build indexed after the mark keeps its blobs."""
    f = Fixture(tmp_path)
    lease = f.store.leases.begin()
    image = f.image(b"built while GC marks")
    floor = f.store.leases.floor()
    f.store.leases.end(lease)  # the build finished after GC took its floor
    deleted, _, finished = f.gc._delete(sorted(blobs_of(image)), set(), floor)
    assert (deleted, finished) == (0, True)
    assert blobs_of(image) <= f.blobs()


def test_an_open_blob_stays_readable_whole_after_gc_deletes_it(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    data = os.urandom(3 << 20)
    digest, _ = f.store.put(data)
    with f.store.open(digest) as stream:
        head = stream.read(1000)
        f.gc.collect()
        assert digest not in f.blobs()
        rest = stream.read()
    assert head + rest == data


def test_a_journal_left_by_a_crash_is_finished_without_deleting_what_is_referenced_now(tmp_path: Path) -> None:
    """Kill between journal and deletion: the next run evicts and deletes, re-checking every blob."""
    f = Fixture(tmp_path)
    evicted = f.tag("old", f.image(b"old-layer"))
    garbage, _ = f.store.put(b"garbage")
    later = f.image(b"later-layer")
    f.gc.journal.write(GcPlan((evicted,), tuple(sorted({garbage, *blobs_of(later)}))))
    f.tag("later", later)  # a record put after the crashed run made its plan
    again = Fixture(tmp_path)
    result = again.gc.collect()
    assert result is not None
    assert again.index.get("old", "latest") is None
    assert again.blobs() == blobs_of(later)
    assert not again.gc.journal.read() is not None


def test_an_interrupted_run_leaves_its_journal_for_the_next(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    for i in range(5):
        f.store.put(b"garbage %d" % i)
    f.gc.cancelled.set()
    result = f.gc.collect()
    assert result is not None and not result.completed
    assert f.gc.journal.read() is not None
    f.gc.cancelled.clear()
    assert f.gc.collect() is not None
    assert f.blobs() == set() and not f.gc.journal.read() is not None


def test_pull_times_are_saved_by_gc_and_read_back(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    f.pulls.record("a", "latest", 42.0)
    f.gc.collect()
    assert PullTimes.in_file(str(tmp_path / "pulls.json")).get("a", "latest") == 42.0
    assert not f.pulls.save()  # nothing changed since: no write


class FullFile:
    """A file whose writes fail as on a full disk."""

    def __init__(self, real: object) -> None:
        self.real = real

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_store_full_and_leaves_no_temporary(tmp_path: Path, code: int) -> None:
    f = Fixture(tmp_path)
    writer = f.store.writer()
    writer.write(b"first chunk fits")
    writer._file = FullFile(writer._file)  # type: ignore[attr-defined]
    FullFile.write = lambda self, data: (_ for _ in ()).throw(OSError(code, os.strerror(code)))  # type: ignore[method-assign]
    with pytest.raises(StoreFull) as caught:
        writer.write(b"second chunk does not")
    assert "full" in caught.value.message and caught.value.retry_after > 0
    assert os.listdir(f.store.temp_dir) == []
    assert f.blobs() == set()
    assert f.store.put(b"serving goes on") == (sha256(b"serving goes on"), 15)
