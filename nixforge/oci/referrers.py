"""SBOM artifact manifests (OCI 1.1: artifactType, empty config, `subject`) and referrers indexes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from nixforge.oci import media_types as mt
from nixforge.oci.documents import ManifestDocument, canonical_json

EMPTY_CONFIG = b"{}"
CREATED_ANNOTATION = "org.opencontainers.image.created"


def descriptor(document: ManifestDocument) -> dict[str, Any]:
    """The OCI descriptor of a stored manifest: media type, digest and size."""
    return {"mediaType": document.media_type, "digest": document.digest, "size": len(document.body)}


def sbom_artifact(subject: ManifestDocument, sbom_digest: str, sbom_size: int, created: str,
                  artifact_type: str = mt.SPDX_JSON) -> ManifestDocument:
    """The artifact manifest holding one SBOM blob, referring to `subject` (an image manifest)."""
    empty = ManifestDocument(mt.OCI_EMPTY, EMPTY_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": mt.OCI_EMPTY, "digest": empty.digest, "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": artifact_type, "digest": sbom_digest, "size": sbom_size}],
        "subject": descriptor(subject),
        "annotations": {CREATED_ANNOTATION: created},
    }
    return ManifestDocument(mt.OCI_MANIFEST, canonical_json(manifest))


def subject_digest(document: ManifestDocument) -> str | None:
    """The digest a manifest's `subject` names, or None (not an artifact, or not JSON we know)."""
    try:
        subject = json.loads(document.body).get("subject")
    except (ValueError, AttributeError):
        return None
    digest = subject.get("digest") if isinstance(subject, dict) else None
    return digest if isinstance(digest, str) else None


def referrer_descriptor(document: ManifestDocument) -> dict[str, Any]:
    """An artifact's entry in a referrers index: its descriptor, artifactType and annotations."""
    manifest = json.loads(document.body)
    entry = descriptor(document)
    artifact_type = manifest.get("artifactType") or manifest.get("config", {}).get("mediaType")
    if isinstance(artifact_type, str):
        entry["artifactType"] = artifact_type
    if isinstance(manifest.get("annotations"), dict):
        entry["annotations"] = manifest["annotations"]
    return entry


def referrers_index(artifacts: Iterable[ManifestDocument], artifact_type: str | None = None) -> dict[str, Any]:
    """The image index `GET /v2/<name>/referrers/<digest>` answers, filtered by artifactType if given."""
    entries = [referrer_descriptor(document) for document in artifacts]
    if artifact_type is not None:
        entries = [entry for entry in entries if entry.get("artifactType") == artifact_type]
    entries.sort(key=lambda entry: entry["digest"])
    return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
