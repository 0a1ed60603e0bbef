"""SBOM artifact manifests (OCI 1.1: artifactType, empty config, `subject`) and referrers indexes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from attrs import evolve

from nixforge.oci import media_types as mt
from nixforge.oci.documents import ImageManifests, ManifestDocument, canonical_json
from nixforge.oci.sbom import ClosurePath, PackageFacts, spdx_sbom
from nixforge.store.interfaces import IBlobStore

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


def store_sbom(
    store: IBlobStore, image: ImageManifests, closure: Sequence[ClosurePath], out_path: str,
    facts: PackageFacts, name: str, created: datetime,
) -> ImageManifests:
    """Store `closure`'s SPDX document and one artifact per manifest form of `image`; return `image`
    with them as its referrers. Blocking; ValueError when the closure can't be described."""
    document = spdx_sbom(closure, out_path, facts, name, created)
    sbom_digest, sbom_size = store.put(document)
    store.put(EMPTY_CONFIG)
    stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    artifacts = tuple(sbom_artifact(subject, sbom_digest, sbom_size, stamp) for subject in (image.oci, image.docker))
    for artifact in artifacts:
        store.put(artifact.body)
    return evolve(image, referrers=artifacts)


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
