"""StoredImages: what the store holds for a name: manifests by record or digest, referrers, and its blobs.

Reads only: documents come from a bounded memory cache first, then from the blob store (in a
thread). Which blobs a name may serve is answered from memory too: the blobs named by the manifests
of its current records and of those kept for the retention window, computed once per set of
manifests.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred

from nixforge.errors import BlobUnknown, ForgeError, ManifestUnknown
from nixforge.images.manifest_cache import ManifestCache
from nixforge.oci.documents import ImageManifests, ManifestDocument, referenced_digests
from nixforge.oci.image_index import Platform, stored_manifests
from nixforge.oci.referrers import subject_digest
from nixforge.store.interfaces import IBlobStore, ITagIndex, TagRecord


@define(eq=False)
class StoredImages:
    """The stored side of the registry; `run_in_thread` runs blocking store reads."""

    store: IBlobStore
    index: ITagIndex
    run_in_thread: Callable[..., Deferred[Any]]
    cache_size: int
    host_platform: Platform | None = None
    names_kept: int = 1024
    cache: ManifestCache = field(init=False)
    # name → (the manifest digests its blobs were computed from, those blobs)
    _blobs: OrderedDict[str, tuple[frozenset[str], frozenset[str]]] = field(factory=OrderedDict, init=False)

    def __attrs_post_init__(self) -> None:
        self.cache = ManifestCache(self.cache_size)

    def cached(self, record: TagRecord) -> ImageManifests | None:
        """The record's image when it is kept assembled in memory (no disk, no JSON); else None."""
        manifests = self.cache.image(record.oci_digest)
        if manifests is None or manifests.docker.digest != record.docker_digest:
            return None
        return manifests

    def remember(self, manifests: ImageManifests) -> None:
        """Keep a just-built image in memory."""
        self.cache.add_image(manifests)

    async def load(self, record: TagRecord) -> ImageManifests:
        """Both forms of a record's image, with its members and referrers; ManifestUnknown if incomplete."""
        oci = await self.document(record.oci_digest)
        docker = await self.document(record.docker_digest)
        related = [await self.document(digest) for digest in record.manifests]
        try:
            manifests = stored_manifests(oci, docker, related, self.host_platform)
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise ManifestUnknown("stored index is inconsistent", {"digest": oci.digest}) from error
        self.cache.add_image(manifests)
        return manifests

    async def document(self, digest: str) -> ManifestDocument:
        """One stored manifest, from memory or the store."""
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        body = await self.run_in_thread(self._read_manifest, digest)
        media_type = json.loads(body).get("mediaType")
        if not isinstance(media_type, str):
            raise ManifestUnknown("stored manifest has no media type", {"digest": digest})
        return ManifestDocument(media_type, body)

    def _read_manifest(self, digest: str) -> bytes:
        try:
            return self.store.read(digest)
        except BlobUnknown:
            raise ManifestUnknown("manifest unknown", {"digest": digest}) from None

    async def by_digest(self, name: str, digest: str) -> ManifestDocument:
        """The manifest of `name` with this digest (current or retained); ManifestUnknown otherwise."""
        if not self.index.has_manifest(name, digest):
            raise ManifestUnknown("manifest unknown", {"name": name, "digest": digest})
        document = await self.document(digest)
        self.cache.add(document)
        return document

    async def referrers(self, records: list[TagRecord], digest: str) -> list[ManifestDocument]:
        """The artifacts of `records` whose subject is `digest`, sorted by digest."""
        found: dict[str, ManifestDocument] = {}
        for record in records:
            if digest not in record.digests():
                continue
            try:
                manifests = await self.load(record)
            except ForgeError:
                continue  # an incomplete stored image has no referrers to show
            for document in manifests.related():
                if subject_digest(document) == digest:
                    found[document.digest] = document
        return [found[key] for key in sorted(found)]

    def names_blob(self, name: str, manifests: frozenset[str], digest: str) -> bool | None:
        """From memory: whether `manifests` (of `name`) name the blob; None when not yet known."""
        kept = self._blobs.get(name)
        if kept is None or kept[0] != manifests:
            return None
        self._blobs.move_to_end(name)
        return digest in kept[1]

    async def blobs_named(self, name: str, manifests: frozenset[str], digest: str) -> bool:
        """Whether `manifests` (of `name`) name the blob, reading them once; kept for `names_blob`."""
        blobs = await self._blobs_of(manifests)
        self._blobs[name] = (manifests, blobs)
        self._blobs.move_to_end(name)
        while len(self._blobs) > self.names_kept:
            self._blobs.popitem(last=False)
        return digest in blobs

    async def _blobs_of(self, manifests: frozenset[str]) -> frozenset[str]:
        """Every blob the manifests name: themselves, configs, layers, and an index's children's."""
        found: set[str] = set()
        todo = list(manifests)
        while todo:
            digest = todo.pop()
            if digest in found:
                continue
            found.add(digest)
            try:
                document = await self.document(digest)
            except (ManifestUnknown, ValueError):
                continue  # gone (GC) or not a manifest: it names nothing more
            blobs, children = referenced_digests(document.body)
            found |= blobs
            todo.extend(children - found)
        return frozenset(found)
