"""ImageService: index first, one build per image, freshness, limits, digests and blobs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nixforge.errors import BlobUnknown, BuildFailed, ManifestUnknown, NameUnknown, StoreFull, TooManyBuilds
from nixforge.images.interfaces import IImageService
from nixforge.images.policy import AccessPolicy
from nixforge.nix.client import NixAttributeMissing
from nixforge.oci.documents import ImageManifests
from nixforge.store.interfaces import IStoreKeeper
from nixforge.store.locked_revisions import MemoryLockedRevisions
from nixforge.store.tag_index import MemoryTagIndex

from .fakes import make_service, policy, result_of, revision_hash


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
    policy = AccessPolicy(flake="github:o/r", revisions=MemoryLockedRevisions(), commit_tags="any")
    service, builder, clock = make_service(policy=policy)
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


def test_build_failures_reach_the_client_and_the_log_at_info() -> None:
    service, builder, _ = make_service()
    pull = service.resolve_tag("hello", "latest")
    builder.fail_with = BuildFailed("nix build failed", {"error": "error: builder for 'x.drv' failed",
                                                         "log": ["deliberate failure"]})
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        builder.release()
    finally:
        globalLogPublisher.removeObserver(events.append)
    failure = result_of(pull)
    assert failure.check(BuildFailed)
    assert service.index.get("hello", "latest") is None
    (logged,) = [event for event in events if event.get("log_format", "").startswith("build failed")]
    assert logged["log_level"] == LogLevel.info
    text = formatEvent(logged)
    assert "builder for 'x.drv' failed" in text and "deliberate failure" in text


def test_a_name_found_missing_while_building_is_remembered_too() -> None:
    # An application without `entries` learns only from its built containers that an image is missing.
    service, builder, _ = make_service()
    builder.fail_with = NameUnknown("the application has no such container image")
    pull = service.resolve_tag("applications/app/nope", "latest")
    builder.release()
    assert result_of(pull).check(NameUnknown)
    for _ in range(3):
        assert result_of(service.resolve_tag("applications/app/nope", "latest")).check(NameUnknown)
    assert len(builder.calls) == 1
    assert len(builder.probes) == 1


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
    assert result_of(service.tags("nosuch")).check(NameUnknown)  # neither built nor in the catalog
    assert result_of(service.tags("hello")) == ["latest"]  # not built yet, but the catalog offers it
    assert builder.calls == [] and builder.probes == []


def test_blobs_tags_and_repositories_after_a_build() -> None:
    service, builder, _ = make_service(catalog={"hello": None})
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
    assert len(builder.probes) == 2 and len(builder.calls) == 1
    after = service.index.get("hello", "latest")
    assert after.oci_digest == before.oci_digest and after.built_at == 301
    clock.advance(100)
    result_of(service.resolve_tag("hello", "latest"))
    assert len(builder.probes) == 2  # fresh again: not even planned
    assert builder.locks == ["--refresh github:o/r"] * 2  # latest moves: locked again, with --refresh


def test_missing_names_are_remembered_briefly() -> None:
    # The catalog lists `tool`, but its probe finds no such attribute (say, `packages` moved on).
    service, builder, clock = make_service()
    builder.probe_fails_with = NixAttributeMissing("flake 'github:o/r' does not provide attribute 'tool'")
    for _ in range(3):
        assert result_of(service.resolve_tag("tool", "latest")).check(NameUnknown)
    assert len(builder.probes) == 1
    clock.advance(31)
    assert result_of(service.resolve_tag("tool", "latest")).check(NameUnknown)
    assert len(builder.probes) == 2
    assert builder.calls == []


def test_names_the_catalog_does_not_list_are_unknown_without_a_probe() -> None:
    service, builder, _ = make_service()
    for name in ("made-up", "packages/nosuch", "applications/nosuch/web", "x1", "x2"):
        failure = result_of(service.resolve_tag(name, "latest"))
        assert failure.check(NameUnknown) and failure.value.detail == {"name": name}
    assert builder.probes == [] and builder.calls == []
    assert builder.locks == ["--refresh github:o/r"]  # one lock for every name
    assert builder.catalog_evals == ["github:o/r?rev=1#packages.x86_64-linux"]  # one eval for the revision


def test_probes_do_not_hold_build_slots() -> None:
    service, builder, _ = make_service(max_builds=1, max_queued_builds=1)
    service.resolve_tag("a", "latest")  # holds the only build slot
    builder.probe_fails_with = NixAttributeMissing("flake does not provide attribute")
    for name in ["b", "c", "hello"]:
        assert result_of(service.resolve_tag(name, "latest")).check(NameUnknown)
    assert [call[0] for call in builder.calls] == ["a"]
    builder.release()


# -- the access policy: asked before anything is planned ---------------------------------------


def test_a_name_outside_the_package_globs_is_unknown_on_every_route_and_never_planned() -> None:
    service, builder, _ = make_service(policy=policy(packages=("hello", "tool-*")))
    service.resolve_tag("tool-a", "latest")
    builder.release()
    for name in ("secret", "packages/secret", "applications/app/web"):
        failure = result_of(service.resolve_tag(name, "latest"))
        assert failure.check(NameUnknown) and failure.value.detail["refused_by"] == "NIXFORGE_PACKAGES"
        assert result_of(service.manifest_by_digest(name, "sha256:" + "0" * 64)).check(NameUnknown)
        assert result_of(service.blob(name, "sha256:" + "0" * 64)).check(NameUnknown)
        assert result_of(service.tags(name)).check(NameUnknown)
    assert builder.probes == ["github:o/r?rev=1#tool-a"]
    assert builder.locks == ["--refresh github:o/r"]  # refused names are not even locked


def test_a_name_refused_later_is_no_longer_served_from_the_index_nor_listed() -> None:
    service, builder, _ = make_service()
    for name in ("hello", "secret"):
        service.resolve_tag(name, "latest")
        builder.release()
    record = service.index.get("secret", "latest")
    layer = json.loads(service.store.read(record.oci_digest))["layers"][0]["digest"]
    service.policy = policy(packages=("hello",))
    assert result_of(service.resolve_tag("secret", "latest")).check(NameUnknown)
    assert result_of(service.manifest_by_digest("secret", record.oci_digest)).check(NameUnknown)
    assert result_of(service.blob("secret", layer)).check(NameUnknown)
    assert result_of(service.repositories()) == ["hello"]
    assert len(builder.probes) == 2


def test_packages_and_bare_names_are_one_image_for_the_globs() -> None:
    allowed = policy(packages=("packages/hello", "tool-*"))
    assert allowed.allows_name("hello") and allowed.allows_name("packages/hello")
    assert allowed.allows_name("packages/tool-a") and allowed.allows_name("tool-a")
    assert not allowed.allows_name("applications/hello/web") and not allowed.allows_name("hello2")


def test_a_branch_outside_the_ref_globs_is_refused_with_the_setting_and_never_planned() -> None:
    service, builder, _ = make_service(policy=policy(refs=("main", "v*")))
    service.resolve_tag("hello", "v1.0")
    builder.release()
    failure = result_of(service.resolve_tag("hello", "feature-x"))
    assert failure.check(ManifestUnknown)
    assert failure.value.detail == {"tag": "feature-x", "refused_by": "NIXFORGE_REFS",
                                    "reason": "this branch or git tag is not one the registry serves"}
    assert result_of(service.resolve_tag("hello", "V1.0")).check(ManifestUnknown)  # globs are case-sensitive
    assert builder.probes == ["github:o/r/v1.0?rev=1#hello"]


def test_latest_is_served_whatever_the_ref_globs_say() -> None:
    service, builder, _ = make_service(policy=policy(refs=("main",), commit_tags="none"))
    service.resolve_tag("hello", "latest")
    builder.release()
    assert service.index.get("hello", "latest") is not None


def test_known_commit_tags_are_those_latest_or_an_allowed_branch_locked_for_any_package() -> None:
    service, builder, _ = make_service(policy=policy(refs=("main",)))
    first = revision_hash(1)
    refused = result_of(service.resolve_tag("hello", first))
    assert refused.check(ManifestUnknown) and refused.value.detail["refused_by"] == "NIXFORGE_COMMIT_TAGS"
    assert builder.probes == []
    service.resolve_tag("tool-a", "latest")  # locks the flake at revision 1
    builder.release()
    builder.revision = 2
    service.resolve_tag("tool-a", "main")  # locks it at revision 2
    builder.release()
    for commit in (first, revision_hash(2)):
        service.resolve_tag("hello", commit)  # another package, the same flake revision
        builder.release()
        assert service.index.get("hello", commit) is not None
    assert result_of(service.resolve_tag("hello", revision_hash(3))).check(ManifestUnknown)
    assert result_of(service.tags("hello")) == sorted([first, revision_hash(2), "latest"])


def test_a_commit_locked_only_by_a_branch_no_longer_allowed_is_refused() -> None:
    revisions = MemoryLockedRevisions()
    revisions.record("github:o/r", revision_hash(7), "feature")
    service, builder, _ = make_service(policy=AccessPolicy("github:o/r", revisions, refs=("main",)))
    assert result_of(service.resolve_tag("hello", revision_hash(7))).check(ManifestUnknown)
    service.policy = AccessPolicy("github:o/r", revisions, refs=("feat*",))
    service.resolve_tag("hello", revision_hash(7))
    assert len(builder.probes) == 1


def test_revisions_of_another_flake_are_not_known() -> None:
    revisions = MemoryLockedRevisions()
    revisions.record("github:other/repo", revision_hash(1), "latest")
    service, builder, _ = make_service(policy=AccessPolicy("github:o/r", revisions))
    assert result_of(service.resolve_tag("hello", revision_hash(1))).check(ManifestUnknown)
    assert builder.probes == [] and builder.locks == []


def test_a_pulled_commit_tag_is_not_recorded_as_known() -> None:
    revisions = MemoryLockedRevisions()
    service, builder, _ = make_service(policy=AccessPolicy("github:o/r", revisions, commit_tags="any"))
    builder.revision = 9
    service.resolve_tag("hello", revision_hash(9))
    builder.release()
    assert service.index.get("hello", revision_hash(9)) is not None
    assert revisions.refs("github:o/r", revision_hash(9)) == frozenset()
    service.policy = AccessPolicy("github:o/r", revisions, commit_tags="known")
    assert result_of(service.resolve_tag("hello", revision_hash(9))).check(ManifestUnknown)


def test_commit_tags_none_refuses_even_a_known_revision() -> None:
    revisions = MemoryLockedRevisions()
    revisions.record("github:o/r", revision_hash(1), "latest")
    service, builder, _ = make_service(policy=AccessPolicy("github:o/r", revisions, commit_tags="none"))
    failure = result_of(service.resolve_tag("hello", revision_hash(1)))
    assert failure.check(ManifestUnknown) and "NIXFORGE_COMMIT_TAGS=none" in failure.value.detail["reason"]
    assert builder.probes == []


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
    assert result_of(service.resolve_tag("made-up", "latest")).check(NameUnknown)  # not in the catalog
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
    assert len(builder.probes) == 2 and len(builder.calls) == 2
    assert index.get("hello", "latest") is None
    builder.release()
    assert index.get("hello", "latest") is not None


def test_a_cached_fresh_tag_is_answered_from_memory_without_store_or_thread() -> None:
    threaded: list[object] = []
    service, builder, _ = make_service(run_in_thread=lambda f, *a: threaded.append(f) or maybeDeferred(f, *a))
    service.resolve_tag("hello", "latest")
    builder.release()
    record = service.index.get("hello", "latest")
    threaded.clear()
    reads: list[str] = []
    original_read = service.store.read
    service.store.read = lambda digest: reads.append(digest) or original_read(digest)  # type: ignore[method-assign]
    answer = service.resolve_tag("hello", "latest")
    assert answer.called
    both = result_of(answer)
    assert (both.oci.digest, both.docker.digest) == (record.oci_digest, record.docker_digest)
    assert reads == [] and threaded == []


def test_an_evicted_tag_is_read_from_the_store_again() -> None:
    service, builder, _ = make_service(cache_size=1)
    for name in ["a", "b"]:
        service.resolve_tag(name, "latest")
        builder.release()
    reads: list[str] = []
    original_read = service.store.read
    service.store.read = lambda digest: reads.append(digest) or original_read(digest)  # type: ignore[method-assign]
    record = service.index.get("a", "latest")
    assert result_of(service.resolve_tag("a", "latest")).oci.digest == record.oci_digest
    assert sorted(reads) == sorted([record.oci_digest, record.docker_digest])


def test_what_the_metrics_read() -> None:
    service, builder, _ = make_service(max_builds=1, max_queued_builds=2)
    service.resolve_tag("a", "latest")
    service.resolve_tag("b", "latest")
    assert (service.builds_running, service.builds_queued) == (1, 1)
    builder.release()
    builder.release()
    assert (service.builds_running, service.builds_queued) == (0, 0)
    hits = service.manifest_cache_hits
    result_of(service.resolve_tag("a", "latest"))  # both manifests from memory
    assert service.manifest_cache_hits > hits
