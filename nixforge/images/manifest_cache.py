"""A small LRU of manifests in memory, so hot tags and digests are served without disk reads."""

from __future__ import annotations

from collections import OrderedDict

from nixforge.oci.documents import ImageManifests, ManifestDocument


class ManifestCache:
    """Keep the last `capacity` images' manifests (both forms of an image count as one).

    An image added whole (`add_image`) is also kept assembled, so a hot tag is answered with no
    JSON work at all (an index's members, an image's SBOM referrers, already put together).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._images: OrderedDict[str, tuple[ManifestDocument, ...]] = OrderedDict()
        self._image_of: dict[str, str] = {}
        self._assembled: dict[str, ImageManifests] = {}
        self.hits = 0
        self.misses = 0

    def add_image(self, manifests: ImageManifests) -> None:
        """Remember an image's documents, and the image as assembled, as the most recently used."""
        self._assembled[self.add(manifests.oci, manifests.docker, *manifests.related())] = manifests

    def image(self, digest: str) -> ImageManifests | None:
        """The image added whole whose OCI form has this digest, if it is still kept."""
        key = self._image_of.get(digest)
        manifests = self._assembled.get(key) if key is not None else None
        if manifests is None or manifests.oci.digest != digest:
            return None
        self.hits += 1
        self._images.move_to_end(key)
        return manifests

    def add(self, *documents: ManifestDocument) -> str:
        """Remember the documents of one image as the most recently used; return its key."""
        key = " ".join(document.digest for document in documents)
        self._images[key] = documents
        self._images.move_to_end(key)
        for document in documents:
            self._image_of[document.digest] = key
        while len(self._images) > self._capacity:
            evicted_key, evicted = self._images.popitem(last=False)
            self._assembled.pop(evicted_key, None)
            for document in evicted:
                if self._image_of.get(document.digest) == evicted_key:
                    del self._image_of[document.digest]
        return key

    def get(self, digest: str) -> ManifestDocument | None:
        """Return the cached manifest with this digest, if any, marking its image as used."""
        key = self._image_of.get(digest)
        if key is None:
            self.misses += 1
            return None
        self.hits += 1
        self._images.move_to_end(key)
        return next(document for document in self._images[key] if document.digest == digest)

    def __len__(self) -> int:
        return len(self._images)
