"""`nix/<name>`: the nix-snapshotter form of the image `<name>` serves, in front of the image service.

Every other name goes to the wrapped service unchanged. For `nix/<name>:<tag>` the ordinary image is
resolved first (so the policy, auth and builds apply as for `<name>`), then its closure (from its
SBOM, ServedClosures) and its config make the nix-snapshotter manifest (oci/nix_snapshotter.py).
The closure's paths are exactly those the binary cache at /nix-cache/ serves for `<name>`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from zope.interface import implementer

from nixforge.errors import BlobUnknown, ManifestUnknown, NameUnknown
from nixforge.images.blob_files import stored_blob
from nixforge.images.interfaces import BlobFile, IImageService
from nixforge.images.served_closures import ServedClosures
from nixforge.oci.documents import ImageManifests, ManifestDocument
from nixforge.oci.nix_snapshotter import snapshotter_image
from nixforge.store.interfaces import IBlobStore

PREFIX = "nix/"
_MAX_REMEMBERED = 1000


@implementer(IImageService)
@define(eq=False)
class SnapshotterImages:
    """An IImageService: `nix/<name>` made here from `<name>`, everything else from `images`."""

    images: IImageService
    served: ServedClosures
    store: IBlobStore
    run_in_thread: Callable[..., Deferred[Any]]
    # manifest digest → (name, document): what nix/ names served, for pulls by digest
    _documents: dict[str, tuple[str, ManifestDocument]] = field(factory=dict, init=False)
    # (name, tag, ordinary manifest digest) → the nix-snapshotter manifest made from it
    _made: dict[tuple[str, str, str], ManifestDocument] = field(factory=dict, init=False)

    def resolve_tag(self, name: str, tag: str, on_build: Callable[[str], None] | None = None
                    ) -> Deferred[ImageManifests]:
        """`nix/<name>:<tag>` made from `<name>:<tag>`; other names from the wrapped service."""
        if not name.startswith(PREFIX):
            return self.images.resolve_tag(name, tag, on_build=on_build)
        return ensureDeferred(self._resolve(name, tag, on_build))

    async def _resolve(self, name: str, tag: str, on_build: Callable[[str], None] | None) -> ImageManifests:
        inner = name[len(PREFIX):]
        image = (await self.images.resolve_tag(inner, tag, on_build=on_build)).host_image()
        key = (name, tag, image.oci.digest)
        document = self._made.get(key)
        if document is not None and self._complete(document):
            return ImageManifests(document, document)
        await self.served.refresh()
        closure = self.served.closure_of(image.oci.digest)
        if closure is None:
            raise NameUnknown("no nix-snapshotter image: nixforge knows no closure for this image "
                              "(only packages have one; application images don't)", {"name": inner})
        config = json.loads(await self.run_in_thread(self.store.read, json.loads(image.oci.body)["config"]["digest"]))
        document = await self.run_in_thread(snapshotter_image, self.store, config, closure.paths, closure.root)
        if len(self._made) >= _MAX_REMEMBERED:
            self._made.clear()
            self._documents.clear()
        self._made[key] = document
        self._documents[document.digest] = (name, document)
        return ImageManifests(document, document)

    def live_blobs(self) -> list[str]:
        """The manifests, configs and layers of the nix/ images made so far: GC keeps them (any thread)."""
        digests = []
        for document in list(self._made.values()):
            body = json.loads(document.body)
            digests += [document.digest, body["config"]["digest"], *(layer["digest"] for layer in body["layers"])]
        return digests

    def _complete(self, document: ManifestDocument) -> bool:
        body = json.loads(document.body)
        digests = [body["config"]["digest"], *(layer["digest"] for layer in body["layers"])]
        return all(self.store.size(digest) is not None for digest in digests)  # GC may have swept them

    def manifest_by_digest(self, name: str, digest: str) -> Deferred[ManifestDocument]:
        """A nix/ manifest this process made (by tag first), or the wrapped service's answer."""
        if not name.startswith(PREFIX):
            return self.images.manifest_by_digest(name, digest)
        found = self._documents.get(digest)
        if found is None or found[0] != name:
            return fail(ManifestUnknown("manifest unknown (pull nix/ images by tag first)",
                                        {"name": name, "digest": digest}))
        return succeed(found[1])

    def referrers(self, name: str, digest: str) -> Deferred[list[ManifestDocument]]:
        """nix/ images have no referrers."""
        if not name.startswith(PREFIX):
            return self.images.referrers(name, digest)
        return succeed([])

    def blob(self, name: str, digest: str) -> Deferred[BlobFile]:
        """A blob of `nix/<name>`: one the store holds, while `<name>` is served."""
        if not name.startswith(PREFIX):
            return self.images.blob(name, digest)
        return ensureDeferred(self._blob(name[len(PREFIX):], digest))

    async def _blob(self, inner: str, digest: str) -> BlobFile:
        await self.images.tags(inner)  # the policy's NameUnknown for a refused name
        blob = await stored_blob(self.store, digest, self.run_in_thread)
        if blob is None:
            raise BlobUnknown("blob unknown to registry", {"digest": digest})
        return blob

    def tags(self, name: str) -> Deferred[list[str]]:
        """The tags of `<name>` for `nix/<name>`."""
        return self.images.tags(name.removeprefix(PREFIX))

    def repositories(self) -> Deferred[list[str]]:
        """The wrapped service's repositories (nix/ forms are not listed)."""
        return self.images.repositories()

    def refresh(self, name: str | None) -> list[str]:
        """Refresh `<name>` for `nix/<name>`."""
        return self.images.refresh(None if name is None else name.removeprefix(PREFIX))
