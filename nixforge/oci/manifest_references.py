"""What a stored manifest or image index references, read from its JSON: GC's view of OCI documents."""

from __future__ import annotations

import json
from typing import Any

from zope.interface import implementer

from nixforge.store.interfaces import IReferences


def _document(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _digests(descriptors: Any) -> frozenset[str]:
    if not isinstance(descriptors, list):
        return frozenset()
    return frozenset(d["digest"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("digest"), str))


@implementer(IReferences)
class ManifestReferences:
    """Digests named by OCI and Docker manifests (config, layers) and indexes (child manifests)."""

    def blobs(self, body: bytes) -> frozenset[str]:
        """The config and layer digests of a manifest; empty for anything else."""
        document = _document(body)
        if document is None:
            return frozenset()
        return _digests([document.get("config"), *(document.get("layers") or [])])

    def children(self, body: bytes) -> frozenset[str]:
        """The child manifest digests of an index (or manifest list); empty for anything else."""
        document = _document(body)
        return frozenset() if document is None else _digests(document.get("manifests"))
