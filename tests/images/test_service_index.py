"""ImageService with index tags and SBOM referrers: recorded, reloaded after a restart, resolvable by digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import evolve

from nixforge.errors import NameUnknown
from nixforge.images.service import ImageService
from nixforge.oci.documents import ImageManifests, build_manifests
from nixforge.oci.image_index import build_index, platform_for
from nixforge.oci.layer_writer import LayerWriter
from nixforge.oci.referrers import EMPTY_CONFIG, sbom_artifact, subject_digest
from nixforge.store.durable_index import FilesystemTagIndex
from nixforge.store.filesystem import FilesystemBlobStore

from .fakes import FakeNix, make_forge, policy, result_of


class IndexBuilder(FakeNix):
    """Builds, at once, an index of two images (each with an SBOM artifact per form)."""

    def __init__(self, store: FilesystemBlobStore) -> None:
        super().__init__(store)
        self.builds = 0

    def _image(self, name: str) -> ImageManifests:
        writer = LayerWriter(self.store)
        writer.write(name.encode())
        config_digest, config_size = self.store.put(b'{"rootfs":{}}')
        image = build_manifests(config_digest, config_size, [writer.close()])
        sbom_digest, sbom_size = self.store.put(b'{"spdxVersion":"SPDX-2.3","name":"%s"}' % name.encode())
        self.store.put(EMPTY_CONFIG)
        artifacts = tuple(sbom_artifact(subject, sbom_digest, sbom_size, "1970-01-01T00:00:00Z")
                          for subject in (image.oci, image.docker))
        image = evolve(image, referrers=artifacts)
        for document in (image.oci, image.docker, *artifacts):
            self.store.put(document.body)
        return image

    async def build(self, plan: Any, stored: Any = None, lines: Any = None) -> ImageManifests:
        self.builds += 1
        members = [(platform_for("x86_64-linux"), self._image("amd64")),
                   (platform_for("aarch64-linux"), self._image("arm64"))]
        index = build_index(members, host=0)
        self.store.put(index.oci.body)
        self.store.put(index.docker.body)
        if stored is not None:
            await stored(index)  # the service's tag record
        return index


def make(tmp_path: Path) -> tuple[ImageService, IndexBuilder]:
    builder = IndexBuilder(FilesystemBlobStore(str(tmp_path)))
    forge = make_forge(builder, index=FilesystemTagIndex(str(tmp_path)), policy=policy(packages=("hello",)),
                       host_platform=platform_for("x86_64-linux"))
    return forge.service, builder


def test_an_index_tag_survives_a_restart_with_its_members_and_referrers(tmp_path: Path) -> None:
    service, builder = make(tmp_path)
    built = result_of(service.resolve_tag("hello", "latest"))
    record = service.index.get("hello", "latest")
    assert (record.oci_digest, record.docker_digest) == (built.oci.digest, built.docker.digest)
    assert set(record.manifests) == {document.digest for document in built.related()}
    assert builder.builds == 1

    restarted, rebuilder = make(tmp_path)  # a new process: the index and blobs from disk only
    again = result_of(restarted.resolve_tag("hello", "latest"))
    assert rebuilder.builds == 0
    assert again == built  # members, host and referrers put back together from the stored documents
    assert again.host_image().oci.digest == built.members[0].oci.digest
    for document in built.related():
        assert result_of(restarted.manifest_by_digest("hello", document.digest)).body == document.body
    for member in built.members:
        for form in (member.oci, member.docker):
            [artifact] = result_of(restarted.referrers("hello", form.digest))
            assert subject_digest(artifact) == form.digest
    assert result_of(restarted.referrers("hello", built.oci.digest)) == []  # the index itself has none
    assert result_of(restarted.referrers("hello", "sha256:" + "0" * 64)) == []


def test_referrers_of_a_name_the_policy_refuses_are_unknown(tmp_path: Path) -> None:
    service, _ = make(tmp_path)
    assert result_of(service.referrers("other", "sha256:" + "0" * 64)).check(NameUnknown)


def test_a_cached_index_tag_is_answered_whole_from_memory(tmp_path: Path) -> None:
    """The fast path for a hot tag keeps the index's members and each image's referrers."""
    service, _ = make(tmp_path)
    built = result_of(service.resolve_tag("hello", "latest"))
    service.store.read = None  # type: ignore[method-assign]  # any store read now fails the test
    again = service.resolve_tag("hello", "latest")
    assert again.called  # answered synchronously
    cached = result_of(again)
    assert cached.is_index and cached.members == built.members and cached.host_image() == built.host_image()
    assert all(member.referrers for member in cached.members)
