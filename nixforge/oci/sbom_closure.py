"""Read back from a stored SBOM artifact the Nix closure it describes: its root and its store paths."""

from __future__ import annotations

import json

from attrs import frozen

from nixforge.oci import media_types as mt
from nixforge.store.interfaces import IBlobStore

STORE_PREFIX = "/nix/store/"


@frozen
class ImageClosure:
    """The closure behind one image manifest (`subject`): the package's output and every path."""

    subject: str
    root: str
    paths: frozenset[str]


def sbom_blob_digest(manifest: bytes) -> tuple[str, str] | None:
    """(subject digest, SBOM blob digest) of an SPDX artifact manifest; None for any other manifest."""
    try:
        document = json.loads(manifest)
        if document.get("artifactType") != mt.SPDX_JSON:
            return None
        return document["subject"]["digest"], document["layers"][0]["digest"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def closure_from_spdx(subject: str, body: bytes) -> ImageClosure:
    """The closure an SPDX document of nixforge's names: package file names, and what it DESCRIBES."""
    document = json.loads(body)
    ids = {}
    for package in document.get("packages", []):
        path = package.get("packageFileName")
        if isinstance(path, str) and path.startswith(STORE_PREFIX) and "/" not in path[len(STORE_PREFIX):]:
            ids[package.get("SPDXID")] = path
    described = [rel.get("relatedSpdxElement") for rel in document.get("relationships", [])
                 if rel.get("relationshipType") == "DESCRIBES" and rel.get("spdxElementId") == "SPDXRef-DOCUMENT"]
    roots = [ids[element] for element in described if element in ids]
    if not roots:
        raise ValueError("the SBOM describes no store path")
    return ImageClosure(subject, roots[0], frozenset(ids.values()))


def read_closures(store: IBlobStore, manifest_digests: tuple[str, ...]) -> list[ImageClosure]:
    """The closures of the SPDX artifacts among stored manifests (blocking; skips what is unreadable)."""
    closures = []
    seen = set()
    for digest in manifest_digests:
        try:
            found = sbom_blob_digest(store.read(digest))
            if found is None or found in seen:
                continue
            seen.add(found)
            closures.append(closure_from_spdx(found[0], store.read(found[1])))
        except Exception:  # a missing or foreign blob simply names no closure
            continue
    return closures
