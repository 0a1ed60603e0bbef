"""ImageService: index first, one build per image, freshness, limits, digests and blobs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nixforge.errors import BlobUnknown, BuildFailed, ManifestUnknown, NameUnknown, StoreFull, TooManyBuilds
from nixforge.images.builder import BuildPlan
from nixforge.images.interfaces import IImageService
from nixforge.images.service import ImageService
from nixforge.images.targets import BuildTarget
from nixforge.oci.documents import ImageManifests, build_manifests
from nixforge.oci.layer_writer import LayerWriter
from nixforge.store.interfaces import IStoreKeeper
from nixforge.store.memory import MemoryBlobStore
from nixforge.store.tag_index import MemoryTagIndex


class FakeBuilder:
    """Plans at once (locking to `revision`); each build waits until the test releases it."""

    def __init__(self, store: MemoryBlobStore) -> None:
        self.store = store
        self.calls: list[tuple[str, str, str]] = []
        self.plans: list[BuildPlan] = []
        self.pending: list[Deferred[None]] = []
        self.fail_with: Exception | None = None
        self.plan_fails_with: Exception | None = None
        self.revision = 1

    async def plan(self, target: BuildTarget, flake_ref: str, tag: str) -> BuildPlan:
        self.plans.append(BuildPlan(target, tag, flake_ref, f"{flake_ref}?rev={self.revision}", {}))
        if self.plan_fails_with is not None:
            raise self.plan_fails_with
        return self.plans[-1]

    async def build(self, plan: BuildPlan) -> ImageManifests:
        self.calls.append((plan.target.name, plan.flake_ref, plan.tag))
        gate: Deferred[None] = Deferred()
        self.pending.append(gate)
        await gate
        if self.fail_with is not None:
            raise self.fail_with
        writer = LayerWriter(self.store)
        writer.write(f"{plan.locked}:{plan.target.name}:{len(self.calls)}".encode())
        layer = writer.close()
        config_digest, config_size = self.store.put(b'{"rootfs":{}}')
        manifests = build_manifests(config_digest, config_size, [layer])
        self.store.put(manifests.oci.body)
        self.store.put(manifests.docker.body)
        return manifests

    def release(self) -> None:
        while self.pending:
            self.pending.pop(0).callback(None)


def make_service(**overrides: Any) -> tuple[ImageService, FakeBuilder, Clock]:
    clock = Clock()
    store = MemoryBlobStore()
    builder = FakeBuilder(store)
    settings: dict[str, Any] = {
        "reactor": clock, "builder": builder, "store": store, "index": MemoryTagIndex(),
        "run_in_thread": lambda f, *a: maybeDeferred(f, *a), "flake": "github:o/r",
        "refresh_interval": 300.0, "max_builds": 2, "max_queued_builds": 2, "cache_size": 4,
    }
    settings.update(overrides)
    return ImageService(**settings), builder, clock


def result_of(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def test_provides_the_interface() -> None:
    service, _, _ = make_service()
    assert verifyObject(IImageService, service)


def test_concurrent_pulls_share_one_build_and_the_second_pull_is_served_from_the_index() -> None:
    service, builder, _ = make_service()
    pulls = [service.resolve_tag("hello", "latest") for _ in range(5)]
    assert len(builder.calls) == 1
    builder.release()
    digests = {result_of(pull).oci.digest for pull in pulls}
    assert len(digests) == 1
    again = result_of(service.resolve_tag("hello", "latest"))
    assert again.oci.digest in digests
    assert len(builder.calls) == 1


def test_a_cancelled_pull_does_not_cancel_the_build_for_others() -> None:
    service, builder, _ = make_service()
    first = service.resolve_tag("hello", "latest")
    second = service.resolve_tag("hello", "latest")
    first.cancel()
    assert isinstance(result_of(first).value, CancelledError)
    builder.release()
    assert isinstance(result_of(second), ImageManifests)
    assert service.index.get("hello", "latest") is not None


def test_tags_map_to_git_refs() -> None:
    service, builder, _ = make_service()
    service.resolve_tag("packages/hello", "v1.0")
    assert builder.calls == [("packages/hello", "github:o/r/v1.0", "v1.0")]
    builder.release()


def test_stale_latest_is_served_while_a_rebuild_runs_in_the_background() -> None:
    service, builder, clock = make_service()
    service.resolve_tag("hello", "latest")
    builder.release()
    old = service.index.get("hello", "latest")
    clock.advance(301)
    builder.revision = 2
    served = result_of(service.resolve_tag("hello", "latest"))
    assert served.oci.digest == old.oci_digest
    assert len(builder.calls) == 2
    builder.release()
    assert service.index.get("hello", "latest").oci_digest != old.oci_digest
    assert service.index.has_manifest("hello", old.oci_digest)
    assert result_of(service.manifest_by_digest("hello", old.oci_digest)).digest == old.oci_digest


def test_commit_tags_are_never_rebuilt() -> None:
    service, builder, clock = make_service()
    commit = "a" * 40
    service.resolve_tag("hello", commit)
    builder.release()
    clock.advance(10_000)
    result_of(service.resolve_tag("hello", commit))
    assert len(builder.calls) == 1


def test_failed_background_refresh_keeps_the_old_image_and_backs_off() -> None:
    service, builder, clock = make_service()
    service.resolve_tag("hello", "latest")
    builder.release()
    clock.advance(301)
    builder.revision = 2
    builder.fail_with = BuildFailed("broken", {"log": ["x"]})
    result_of(service.resolve_tag("hello", "latest"))
    builder.release()
    result_of(service.resolve_tag("hello", "latest"))
    assert len(builder.calls) == 2


def test_build_failures_reach_the_client() -> None:
    service, builder, _ = make_service()
    pull = service.resolve_tag("hello", "latest")
    builder.fail_with = BuildFailed("nix build failed", {"log": ["deliberate failure"]})
    builder.release()
    failure = result_of(pull)
    assert failure.check(BuildFailed)
    assert service.index.get("hello", "latest") is None


def test_queue_limit_gives_too_many_builds() -> None:
    service, builder, _ = make_service(max_builds=1, max_queued_builds=1)
    service.resolve_tag("a", "latest")
    service.resolve_tag("b", "latest")
    third = result_of(service.resolve_tag("c", "latest"))
    assert third.check(TooManyBuilds)
    assert third.value.retry_after > 0
    assert [call[0] for call in builder.calls] == ["a"]
    builder.release()  # leave no build pending for the garbage collector to find


def test_unknown_names_and_digests() -> None:
    service, builder, _ = make_service()
    assert result_of(service.resolve_tag("library/hello", "latest")).check(NameUnknown)
    assert result_of(service.manifest_by_digest("hello", "sha256:" + "0" * 64)).check(ManifestUnknown)
    assert result_of(service.blob("hello", "sha256:" + "0" * 64)).check(BlobUnknown)
    assert result_of(service.tags("hello")).check(NameUnknown)
    assert builder.calls == []


def test_blobs_tags_and_repositories_after_a_build() -> None:
    service, builder, _ = make_service()
    service.resolve_tag("hello", "latest")
    builder.release()
    manifests = result_of(service.resolve_tag("hello", "latest"))
    assert result_of(service.tags("hello")) == ["latest"]
    assert result_of(service.repositories()) == ["hello"]
    document = result_of(service.manifest_by_digest("hello", manifests.docker.digest))
    assert document.body == manifests.docker.body
    assert result_of(service.manifest_by_digest("other", manifests.docker.digest)).check(ManifestUnknown)
    layer = json.loads(manifests.oci.body)["layers"][0]
    blob = result_of(service.blob("hello", layer["digest"]))
    assert blob.size == layer["size"]
    with blob.open() as stream:
        assert len(stream.read()) == layer["size"]


@pytest.mark.parametrize("cache_size", [1, 4])
def test_manifests_survive_cache_eviction(cache_size: int) -> None:
    service, builder, _ = make_service(cache_size=cache_size)
    for name in ["a", "b", "c"]:
        service.resolve_tag(name, "latest")
        builder.release()
    first = service.index.get("a", "latest")
    assert result_of(service.manifest_by_digest("a", first.oci_digest)).digest == first.oci_digest


def test_a_manifest_fetched_by_digest_then_its_image_by_tag() -> None:
    service, builder, _ = make_service()
    service.resolve_tag("hello", "latest")
    builder.release()
    record = service.index.get("hello", "latest")
    for _ in range(2):
        assert result_of(service.manifest_by_digest("hello", record.oci_digest)).digest == record.oci_digest
        both = result_of(service.resolve_tag("hello", "latest"))
        assert (both.oci.digest, both.docker.digest) == (record.oci_digest, record.docker_digest)


def test_a_refresh_with_an_unchanged_lock_does_not_rebuild() -> None:
    service, builder, clock = make_service()
    service.resolve_tag("hello", "latest")
    builder.release()
    before = service.index.get("hello", "latest")
    clock.advance(301)
    result_of(service.resolve_tag("hello", "latest"))
    assert len(builder.plans) == 2 and len(builder.calls) == 1
    after = service.index.get("hello", "latest")
    assert after.oci_digest == before.oci_digest and after.built_at == 301
    clock.advance(100)
    result_of(service.resolve_tag("hello", "latest"))
    assert len(builder.plans) == 2  # fresh again: not even planned


def test_missing_names_are_remembered_briefly() -> None:
    service, builder, clock = make_service()
    builder.plan_fails_with = NameUnknown("the flake has no such package")
    for _ in range(3):
        assert result_of(service.resolve_tag("nosuch", "latest")).check(NameUnknown)
    assert len(builder.plans) == 1
    clock.advance(31)
    assert result_of(service.resolve_tag("nosuch", "latest")).check(NameUnknown)
    assert len(builder.plans) == 2
    assert builder.calls == []


def test_probes_do_not_hold_build_slots() -> None:
    service, builder, _ = make_service(max_builds=1, max_queued_builds=1)
    service.resolve_tag("a", "latest")  # holds the only build slot
    builder.plan_fails_with = NameUnknown("no such package")
    for name in ["x1", "x2", "x3"]:
        assert result_of(service.resolve_tag(name, "latest")).check(NameUnknown)
    assert [call[0] for call in builder.calls] == ["a"]
    builder.release()


@implementer(IStoreKeeper)
class RecordingKeeper:
    """Remember what the service tells the store's housekeeping, in order."""

    def __init__(self, index: MemoryTagIndex) -> None:
        self.index = index
        self.events: list[tuple[Any, ...]] = []

    def pulled(self, name: str, tag: str) -> None:
        self.events.append(("pulled", name, tag))

    def begin_build(self) -> int:
        self.events.append(("begin", len(self.index.records())))
        return 7

    def end_build(self, token: int) -> None:
        self.events.append(("end", token, len(self.index.records())))

    def stored(self) -> None:
        self.events.append(("stored",))

    def full(self) -> None:
        self.events.append(("full",))


def test_a_build_holds_a_lease_until_its_record_is_indexed_then_asks_for_gc() -> None:
    index = MemoryTagIndex()
    keeper = RecordingKeeper(index)
    assert verifyObject(IStoreKeeper, keeper)
    service, builder, _ = make_service(index=index, keeper=keeper)
    service.resolve_tag("hello", "latest")
    builder.release()
    assert keeper.events == [("begin", 0), ("end", 7, 1), ("stored",)]
    record = index.get("hello", "latest")
    keeper.events.clear()
    result_of(service.resolve_tag("hello", "latest"))
    result_of(service.manifest_by_digest("hello", record.docker_digest))
    assert keeper.events == [("pulled", "hello", "latest"), ("pulled", "hello", "latest")]
    builder.plan_fails_with = NameUnknown("no such package")
    assert result_of(service.resolve_tag("made-up", "latest")).check(NameUnknown)
    assert ("pulled", "made-up", "latest") not in keeper.events


def test_a_full_store_fails_the_pull_and_asks_for_gc() -> None:
    index = MemoryTagIndex()
    keeper = RecordingKeeper(index)
    service, builder, _ = make_service(index=index, keeper=keeper)
    pull = service.resolve_tag("hello", "latest")
    builder.fail_with = StoreFull("the blob store is full", retry_after=30)
    builder.release()
    assert result_of(pull).check(StoreFull)
    assert keeper.events[-2:] == [("full",), ("end", 7, 0)]
    assert index.get("hello", "latest") is None


def test_an_image_evicted_by_gc_is_rebuilt_on_its_next_pull() -> None:
    service, builder, _ = make_service()
    service.resolve_tag("hello", "latest")
    builder.release()
    assert service.index.remove(service.index.get("hello", "latest"))
    again = service.resolve_tag("hello", "latest")
    assert len(builder.calls) == 2
    builder.release()
    assert result_of(again).oci.digest == service.index.get("hello", "latest").oci_digest


def test_an_unchanged_refresh_does_not_bring_back_a_record_gc_evicted() -> None:
    """GC evicts the record while the refresh plans: the image is rebuilt, not re-indexed bare."""
    index = MemoryTagIndex()

    def run_in_thread(function: Any, *args: Any) -> Deferred[Any]:
        if getattr(function, "__name__", "") == "replace":
            index.remove(args[0])  # GC got there first
        return maybeDeferred(function, *args)

    service, builder, clock = make_service(index=index, run_in_thread=run_in_thread)
    service.resolve_tag("hello", "latest")
    builder.release()
    clock.advance(301)
    result_of(service.resolve_tag("hello", "latest"))  # stale: refresh in the background
    assert len(builder.plans) == 2 and len(builder.calls) == 2
    assert index.get("hello", "latest") is None
    builder.release()
    assert index.get("hello", "latest") is not None
