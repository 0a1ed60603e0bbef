"""Ingest an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`) into the blob store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

from nixforge.errors import BuildFailed, DigestInvalid
from nixforge.oci import media_types as mt
from nixforge.oci.documents import ImageManifests, LayerBlob, build_manifests
from nixforge.oci.layer_blobs import (
    CHUNK,
    SMALL_LIMIT,
    check_diff_ids,
    parse_json,
    sniff,
    store_gzip_layer,
    store_tar_layer,
)
from nixforge.references import parse_digest
from nixforge.store.interfaces import IBlobStore

_MAX_NESTING = 4

_INDEX_TYPES = frozenset({mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST})
_MANIFEST_TYPES = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})
_LAYER_TYPES = frozenset({
    mt.OCI_LAYER_GZIP,
    mt.OCI_LAYER_TAR,
    mt.DOCKER_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
})


def is_oci_layout(path: str | os.PathLike[str]) -> bool:
    """Tell whether `path` is a directory holding `oci-layout` and `index.json`."""
    root = Path(path)
    return (root / "oci-layout").is_file() and (root / "index.json").is_file()


def ingest_oci_layout(
    store: IBlobStore, path: str | os.PathLike[str], annotations: dict[str, str] | None = None
) -> ImageManifests:
    """Ingest the image of an OCI layout (linux/amd64 if it holds several). Blocking.

    Every blob read is verified against its descriptor's digest and size. The source manifest's
    annotations are kept, overridden by `annotations`.
    """
    root = Path(path)
    if not is_oci_layout(root):
        raise BuildFailed(f"not an OCI image layout (no oci-layout or index.json): {root}")
    index = parse_json(_read_limited(root / "index.json"), "index.json")
    manifest = _find_manifest(root, index, 0)
    config_descriptor = manifest.get("config")
    layer_descriptors = manifest.get("layers")
    if not isinstance(config_descriptor, dict) or not isinstance(layer_descriptors, list):
        raise BuildFailed("OCI manifest lacks config or layers")
    config_bytes = _read_small_blob(root, config_descriptor)
    config = parse_json(config_bytes, "image config")
    layers = [_copy_layer(store, root, descriptor) for descriptor in layer_descriptors]
    check_diff_ids(config, layers)
    config_digest, config_size = store.put(config_bytes)
    merged = dict(manifest.get("annotations") or {})
    merged.update(annotations or {})
    return build_manifests(config_digest, config_size, layers, merged or None)


def _find_manifest(root: Path, index: Any, depth: int) -> dict[str, Any]:
    """Pick the image manifest of an index, following nested indexes."""
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise BuildFailed("OCI index lists no manifests")
    descriptor = _pick(manifests)
    document = parse_json(_read_small_blob(root, descriptor), "OCI manifest")
    if not isinstance(document, dict):
        raise BuildFailed("OCI manifest is not a JSON object")
    media_type = descriptor.get("mediaType") or document.get("mediaType")
    if media_type in _INDEX_TYPES or (media_type is None and "manifests" in document):
        if depth >= _MAX_NESTING:
            raise BuildFailed("OCI indexes nested too deeply")
        return _find_manifest(root, document, depth + 1)
    if media_type not in _MANIFEST_TYPES and media_type is not None:
        raise BuildFailed(f"unsupported manifest media type: {media_type}")
    return document


def _pick(manifests: list[Any]) -> dict[str, Any]:
    """Prefer linux/amd64 among several descriptors, else take the first."""
    descriptors = [item for item in manifests if isinstance(item, dict)]
    if not descriptors:
        raise BuildFailed("OCI index lists no manifest descriptors")
    for descriptor in descriptors:
        platform = descriptor.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return descriptor
    return descriptors[0]


def _blob_path(root: Path, descriptor: dict[str, Any]) -> tuple[Path, str, int]:
    """Validate a descriptor; return its blob's path, digest and size."""
    digest_text = descriptor.get("digest")
    size = descriptor.get("size")
    if not isinstance(digest_text, str) or not isinstance(size, int) or size < 0:
        raise BuildFailed("OCI descriptor lacks a valid digest or size", {"descriptor": descriptor})
    try:
        digest = parse_digest(digest_text)
    except DigestInvalid as error:
        raise BuildFailed(f"OCI descriptor has an invalid digest: {digest_text[:200]}") from error
    return root / "blobs" / digest.algorithm / digest.hex, str(digest), size


def _read_limited(path: Path) -> bytes:
    """Read a small JSON file, refusing anything over SMALL_LIMIT."""
    try:
        with path.open("rb") as fileobj:
            data = fileobj.read(SMALL_LIMIT + 1)
    except OSError as error:
        raise BuildFailed(f"cannot read {path.name}: {error.strerror}") from error
    if len(data) > SMALL_LIMIT:
        raise BuildFailed(f"{path.name} is too large")
    return data


def _verified_chunks(root: Path, descriptor: dict[str, Any]) -> Iterator[bytes]:
    """Yield a blob in chunks; raise BuildFailed at the end if its digest or size is wrong."""
    path, digest, size = _blob_path(root, descriptor)
    algorithm, _, expected_hex = digest.partition(":")
    hasher = hashlib.new(algorithm)
    seen = 0
    try:
        fileobj = path.open("rb")
    except OSError as error:
        raise BuildFailed(f"OCI layout is missing blob {digest}") from error
    with fileobj:
        while chunk := fileobj.read(min(CHUNK, size - seen + 1)):
            seen += len(chunk)
            if seen > size:
                raise BuildFailed(f"blob {digest} is larger than its descriptor's size {size}")
            hasher.update(chunk)
            yield chunk
    if seen != size:
        raise BuildFailed(f"blob {digest} has {seen} bytes, its descriptor says {size}")
    if hasher.hexdigest() != expected_hex:
        raise BuildFailed(f"blob {digest} does not match its digest")


def _read_small_blob(root: Path, descriptor: dict[str, Any]) -> bytes:
    """Read and verify a small blob (manifest, index, config)."""
    size = descriptor.get("size")
    if isinstance(size, int) and size > SMALL_LIMIT:
        raise BuildFailed(f"OCI document of {size} bytes is too large")
    return b"".join(_verified_chunks(root, descriptor))


def _copy_layer(store: IBlobStore, root: Path, descriptor: Any) -> LayerBlob:
    """Copy one layer: gzip as is, uncompressed tar gzipped on the way; verifies the source.

    The content decides, not the media type: some tools label uncompressed layers as gzip.
    """
    if not isinstance(descriptor, dict):
        raise BuildFailed("OCI manifest has a layer that is not a descriptor")
    media_type = descriptor.get("mediaType")
    if not isinstance(media_type, str) or media_type not in _LAYER_TYPES:
        if isinstance(media_type, str) and "zstd" in media_type:
            raise BuildFailed(f"unsupported layer compression: {media_type}")
        raise BuildFailed(f"unsupported layer media type: {media_type}")
    chunks = _verified_chunks(root, descriptor)
    head = next(chunks, b"")
    kind = sniff(head)
    if kind == "gzip":
        return store_gzip_layer(store, chain([head], chunks))
    if kind == "tar":
        return store_tar_layer(store, chain([head], chunks))
    if kind != "other":
        raise BuildFailed(f"unsupported layer compression: {kind}")
    raise BuildFailed(f"layer {descriptor.get('digest')} is neither a tar nor gzip")
