"""SnapshotterImages: `nix/<name>` made from `<name>`'s image and closure; every other name passed through."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nixforge.errors import BlobUnknown, ManifestUnknown, NameUnknown
from nixforge.images.interfaces import BlobFile, IImageService
from nixforge.images.policy import AccessPolicy
from nixforge.images.served_closures import ServedClosures
from nixforge.images.snapshotter_images import SnapshotterImages
from nixforge.nix.commands import StorePathInfo
from nixforge.oci import media_types as mt
from nixforge.oci.documents import ImageManifests, ManifestDocument, canonical_json, sha256_digest
from nixforge.oci.nix_snapshotter import NIX_STORE_PATH
from nixforge.oci.referrers import store_sbom
from nixforge.oci.sbom import PackageFacts
from nixforge.store.interfaces import TagRecord
from nixforge.store.locked_revisions import MemoryLockedRevisions
from nixforge.store.memory import MemoryBlobStore
from nixforge.store.tag_index import MemoryTagIndex

from .test_nix_cache import now, outcome


@implementer(IImageService)
class Inner:
    """The ordinary service: `web:latest` only; records the calls it gets."""

    def __init__(self, manifests: ImageManifests) -> None:
        self.manifests = manifests
        self.calls: list[tuple[str, ...]] = []

    def resolve_tag(self, name: str, tag: str, on_build: object = None) -> Deferred[ImageManifests]:
        self.calls.append(("resolve_tag", name, tag))
        return succeed(self.manifests) if (name, tag) == ("web", "latest") else fail(NameUnknown("no", {}))

    def manifest_by_digest(self, name: str, digest: str) -> Deferred[ManifestDocument]:
        self.calls.append(("manifest_by_digest", name, digest))
        return fail(ManifestUnknown("no", {}))

    def referrers(self, name: str, digest: str) -> Deferred[list[ManifestDocument]]:
        self.calls.append(("referrers", name, digest))
        return succeed([])

    def blob(self, name: str, digest: str) -> Deferred[BlobFile]:
        self.calls.append(("blob", name, digest))
        return fail(BlobUnknown("no", {}))

    def tags(self, name: str) -> Deferred[list[str]]:
        self.calls.append(("tags", name))
        return succeed(["latest"]) if name == "web" else fail(NameUnknown("refused", {}))

    def repositories(self) -> Deferred[list[str]]:
        return succeed(["web"])

    def refresh(self, name: str | None) -> list[str]:
        self.calls.append(("refresh", str(name)))
        return []


@pytest.fixture
def setup() -> tuple[SnapshotterImages, Inner, MemoryBlobStore, list[str]]:
    # Names only: the SBOM holds /nix/store paths, and these need not exist (then they are file mountpoints).
    root, lib = "/nix/store/" + "a" * 32 + "-web", "/nix/store/" + "b" * 32 + "-lib"
    paths = [root, lib]
    store = MemoryBlobStore()
    config = canonical_json({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": [f"{root}/bin/web"]},
                             "rootfs": {"type": "layers", "diff_ids": []}})
    store.put(config)
    body = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": [],
                           "config": {"mediaType": mt.OCI_CONFIG, "digest": sha256_digest(config),
                                      "size": len(config)}})
    oci = ManifestDocument(mt.OCI_MANIFEST, body)
    docker = ManifestDocument(mt.DOCKER_MANIFEST, body + b" ")
    closure = [StorePathInfo(paths[0], 1, (paths[1],), "sha256:" + "0" * 64),
               StorePathInfo(paths[1], 1, (), "sha256:" + "1" * 64)]
    manifests = store_sbom(store, ImageManifests(oci, docker), closure, paths[0], PackageFacts(), "web",
                           datetime(2026, 1, 1))
    index = MemoryTagIndex()
    index.put(TagRecord("web", "latest", oci.digest, docker.digest, 0.0, "src",
                        manifests=tuple(doc.digest for doc in manifests.related())))
    served = ServedClosures(index, store, AccessPolicy("path:/f", MemoryLockedRevisions()), now)
    inner = Inner(manifests)
    return SnapshotterImages(inner, served, store, now), inner, store, paths


def test_it_is_an_image_service(setup: Any) -> None:
    assert verifyObject(IImageService, setup[0])


def test_nix_names_are_made_from_the_ordinary_image(setup: Any) -> None:
    images, inner, _, paths = setup
    made = outcome(images.resolve_tag("nix/web", "latest"))
    assert ("resolve_tag", "web", "latest") in inner.calls
    manifest = json.loads(made.oci.body)
    annotations = manifest["layers"][0]["annotations"]
    assert sorted(value for key, value in annotations.items() if key.startswith(NIX_STORE_PATH)) == sorted(paths)
    assert outcome(images.manifest_by_digest("nix/web", made.oci.digest)) == made.oci
    assert outcome(images.blob("nix/web", manifest["layers"][0]["digest"])).size > 0
    assert outcome(images.referrers("nix/web", made.oci.digest)) == []
    assert set(images.live_blobs()) == {made.oci.digest, manifest["config"]["digest"], manifest["layers"][0]["digest"]}
    # Made once: the second resolve is answered from memory, with the same bytes.
    assert outcome(images.resolve_tag("nix/web", "latest")).oci == made.oci


def test_errors_of_the_ordinary_name_are_the_nix_names(setup: Any) -> None:
    images, _, store, _ = setup
    with pytest.raises(NameUnknown):
        outcome(images.resolve_tag("nix/other", "latest"))
    with pytest.raises(NameUnknown):
        outcome(images.blob("nix/other", store.put(b"x")[0]))
    with pytest.raises(ManifestUnknown):
        outcome(images.manifest_by_digest("nix/web", "sha256:" + "0" * 64))
    with pytest.raises(BlobUnknown):
        outcome(images.blob("nix/web", "sha256:" + "0" * 64))


def test_other_names_pass_through(setup: Any) -> None:
    images, inner, _, _ = setup
    with pytest.raises(BlobUnknown):
        outcome(images.blob("web", "sha256:" + "0" * 64))
    images.refresh("nix/web")
    assert ("blob", "web", "sha256:" + "0" * 64) in inner.calls and ("refresh", "web") in inner.calls
    assert outcome(images.tags("nix/web")) == ["latest"]
