"""Which blobs a name may serve: those its served manifests name (layers, config, SBOMs, members'), from memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from nixforge.errors import BlobUnknown
from nixforge.images.service import ImageService
from nixforge.oci.documents import ImageManifests

from .fakes import make_service, policy, result_of
from .test_service_index import make


def built(service: ImageService, builder: Any, name: str, tag: str = "latest") -> ImageManifests:
    pull = service.resolve_tag(name, tag)
    builder.release()
    return result_of(pull)


def blobs_of(manifests: ImageManifests) -> tuple[str, list[str]]:
    """The config and the layers of a plain image."""
    body = json.loads(manifests.oci.body)
    return body["config"]["digest"], [layer["digest"] for layer in body["layers"]]


def served(service: ImageService, name: str, digest: str) -> bool:
    """Tell whether the blob is served to `name`; any other answer than BlobUnknown fails the test."""
    answer = result_of(service.blob(name, digest))
    if hasattr(answer, "check"):
        assert answer.check(BlobUnknown), answer
        return False
    assert answer.digest == digest and answer.size == service.store.size(digest)
    return True


def counting_reads(service: ImageService) -> list[str]:
    reads: list[str] = []
    original = service.store.read
    service.store.read = lambda digest: reads.append(digest) or original(digest)  # type: ignore[method-assign]
    return reads


def test_a_layer_and_the_config_of_a_served_image_are_served() -> None:
    service, builder, _ = make_service()
    config, [layer] = blobs_of(built(service, builder, "hello"))
    assert served(service, "hello", layer) and served(service, "hello", config)
    assert served(service, "packages/hello", layer) is False  # another repository, built on its own


def test_a_blob_of_another_names_image_is_unknown() -> None:
    service, builder, _ = make_service()
    _, [hello_layer] = blobs_of(built(service, builder, "hello"))
    _, [tool_layer] = blobs_of(built(service, builder, "tool-a"))
    assert service.store.size(tool_layer) is not None  # stored: only the name is wrong
    assert not served(service, "hello", tool_layer)
    assert not served(service, "tool-a", hello_layer)
    assert served(service, "tool-a", tool_layer)
    assert not served(service, "nosuch", tool_layer)  # no image at all


def test_a_blob_of_a_record_whose_tag_the_policy_now_refuses_is_unknown() -> None:
    service, builder, _ = make_service()
    _, [main_layer] = blobs_of(built(service, builder, "hello", "main"))
    _, [latest_layer] = blobs_of(built(service, builder, "hello", "latest"))
    assert served(service, "hello", main_layer)
    service.policy = policy(refs=("v*",))  # main is no longer served
    assert not served(service, "hello", main_layer)
    assert served(service, "hello", latest_layer)


def test_a_superseded_image_keeps_its_blobs_within_the_retention_window() -> None:
    service, builder, clock = make_service()
    _, [old_layer] = blobs_of(built(service, builder, "hello"))
    builder.revision = 2
    clock.advance(301)
    result_of(service.resolve_tag("hello", "latest"))  # stale: rebuilt in the background at revision 2
    builder.release()
    _, [new_layer] = blobs_of(result_of(service.resolve_tag("hello", "latest")))
    assert new_layer != old_layer
    assert served(service, "hello", new_layer) and served(service, "hello", old_layer)


def test_an_index_members_layer_and_an_sbom_blob_are_served(tmp_path: Path) -> None:
    service, _ = make(tmp_path)
    index = result_of(service.resolve_tag("hello", "latest"))
    for member in index.members:
        config, layers = blobs_of(member)
        assert all(served(service, "hello", digest) for digest in (config, *layers))
        for artifact in member.referrers:
            body = json.loads(artifact.body)
            for descriptor in (body["config"], *body["layers"]):  # the SBOM document and the empty config
                assert served(service, "hello", descriptor["digest"])
    assert not served(service, "hello", "sha256:" + "0" * 64)


def test_the_second_answer_comes_from_memory_without_reading_the_store(tmp_path: Path) -> None:
    result_of(make(tmp_path)[0].resolve_tag("hello", "latest"))
    service, _ = make(tmp_path)  # restarted: nothing in memory
    threaded: list[object] = []
    service.images.run_in_thread = lambda f, *a: threaded.append(f) or maybeDeferred(f, *a)
    reads = counting_reads(service)
    record = service.index.get("hello", "latest")
    member = json.loads(service.store.read(record.oci_digest))["manifests"][1]["digest"]
    layer = json.loads(service.store.read(member))["layers"][0]["digest"]
    reads.clear()
    assert served(service, "hello", layer)
    assert reads and threaded  # the first time, the manifests are read (in a thread)
    reads.clear()
    threaded.clear()
    second: Deferred[Any] = service.blob("hello", layer)
    assert second.called and result_of(second).digest == layer
    unknown = service.blob("hello", "sha256:" + "0" * 64)
    assert unknown.called and result_of(unknown).check(BlobUnknown)
    assert reads == [] and threaded == []
