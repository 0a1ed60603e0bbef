"""Image manifests in their OCI and Docker schema2 forms, built from one config and layer list."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from attrs import field, frozen

from nixforge.oci import media_types as mt
from nixforge.store.layer_cache import LayerBlob

__all__ = ["LayerBlob"]  # the layer cache's value type, used by every layer writer


def sha256_digest(data: bytes) -> str:
    """Return the `sha256:<hex>` digest of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(document: Any) -> bytes:
    """Serialise a document deterministically: sorted keys, no whitespace, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@frozen
class ManifestDocument:
    """One serialised manifest: its media type, bytes and digest."""

    media_type: str
    body: bytes
    digest: str = field()

    @digest.default
    def _digest(self) -> str:
        return sha256_digest(self.body)


@frozen
class ImageManifests:
    """The two forms of one image (they share the config and layer blobs), or of one image index.

    `referrers`: the artifact manifests (SBOMs) whose `subject` is one of these forms.
    `members`: for an index (`oci` an OCI index, `docker` a Docker manifest list), the images it
    lists, in the order of the configured systems; `host` is the position of the one served to a
    client that accepts no index.
    """

    oci: ManifestDocument
    docker: ManifestDocument
    referrers: tuple[ManifestDocument, ...] = ()
    members: tuple[ImageManifests, ...] = ()
    host: int | None = None

    @property
    def is_index(self) -> bool:
        """True when these are an image index and a manifest list."""
        return bool(self.members)

    def host_image(self) -> ImageManifests:
        """The image a client that accepts no index gets: the host's member, or these themselves."""
        if self.members and self.host is not None:
            return self.members[self.host]
        return self

    def related(self) -> tuple[ManifestDocument, ...]:
        """Every stored document beyond `oci` and `docker`: members' forms and every referrer."""
        documents = list(self.referrers)
        for member in self.members:
            documents += [member.oci, member.docker, *member.related()]
        return tuple(documents)


def build_manifests(
    config_digest: str,
    config_size: int,
    layers: list[LayerBlob],
    annotations: dict[str, str] | None = None,
) -> ImageManifests:
    """Build the OCI and Docker schema2 manifests of an image whose layers are all gzip."""
    oci: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": mt.OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    if annotations:
        oci["annotations"] = dict(annotations)
    docker: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": mt.DOCKER_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    return ImageManifests(
        oci=ManifestDocument(mt.OCI_MANIFEST, canonical_json(oci)),
        docker=ManifestDocument(mt.DOCKER_MANIFEST, canonical_json(docker)),
    )


def referenced_digests(body: bytes) -> tuple[frozenset[str], frozenset[str]]:
    """What a manifest names: `(blobs, children)`: its config and layers, and an index's manifests.

    A body that is not a JSON object names nothing.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return frozenset(), frozenset()
    if not isinstance(document, dict):
        return frozenset(), frozenset()

    def digests(descriptors: object) -> frozenset[str]:
        items = descriptors if isinstance(descriptors, list) else []
        return frozenset(item["digest"] for item in items
                         if isinstance(item, dict) and isinstance(item.get("digest"), str))

    return digests([document.get("config"), *(document.get("layers") or [])]), digests(document.get("manifests"))
