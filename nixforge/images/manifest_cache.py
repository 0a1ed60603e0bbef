"""A small LRU of manifests in memory, so hot tags and digests are served without disk reads."""

from __future__ import annotations

from collections import OrderedDict

from nixforge.oci.documents import ManifestDocument


class ManifestCache:
    """Keep the last `capacity` images' manifests (both forms of an image count as one)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._images: OrderedDict[str, tuple[ManifestDocument, ...]] = OrderedDict()
        self._image_of: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def add(self, *documents: ManifestDocument) -> None:
        """Remember the documents of one image as the most recently used."""
        key = " ".join(document.digest for document in documents)
        self._images[key] = documents
        self._images.move_to_end(key)
        for document in documents:
            self._image_of[document.digest] = key
        while len(self._images) > self._capacity:
            _, evicted = self._images.popitem(last=False)
            for document in evicted:
                self._image_of.pop(document.digest, None)

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
