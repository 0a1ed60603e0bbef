"""Ingest whatever image a build produced: a docker-archive file or an OCI layout directory."""

from __future__ import annotations

import os
from pathlib import Path

from nixforge.errors import BuildFailed
from nixforge.oci.docker_archive import ingest_docker_archive, ingest_stream
from nixforge.oci.documents import ImageManifests
from nixforge.oci.layer_blobs import sniff
from nixforge.oci.oci_layout import ingest_oci_layout, is_oci_layout
from nixforge.store.interfaces import IBlobStore

__all__ = ["ingest_image", "ingest_stream"]

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz")


def ingest_image(
    store: IBlobStore, path: str | os.PathLike[str], annotations: dict[str, str] | None = None
) -> ImageManifests:
    """Store the image at `path` (a build output) and return its OCI and Docker manifests. Blocking.

    `path` is a docker-archive (`.tar` or `.tar.gz`, compression detected by content), an OCI
    image layout directory, or a directory holding exactly one `*.tar`/`*.tar.gz` image file.
    Anything else raises BuildFailed.
    """
    source = Path(path)
    if source.is_dir():
        if is_oci_layout(source):
            return ingest_oci_layout(store, source, annotations)
        source = _single_archive(source)
    if not source.is_file():
        raise BuildFailed(f"build output is not an image: {path} does not exist")
    _check_archive(source)
    return ingest_docker_archive(store, source, annotations)


def _single_archive(directory: Path) -> Path:
    """Return the one image archive in `directory`, or raise BuildFailed."""
    candidates = sorted(
        entry for entry in directory.iterdir()
        if entry.name.endswith(_ARCHIVE_SUFFIXES) and entry.is_file()
    )
    if len(candidates) != 1:
        found = ", ".join(entry.name for entry in candidates) or "none"
        raise BuildFailed(
            f"build output is not an image: {directory} is neither an OCI layout nor a directory "
            f"with exactly one .tar/.tar.gz image (found: {found})"
        )
    return candidates[0]


def _check_archive(path: Path) -> None:
    """Refuse files that cannot be docker-archives, by their first bytes."""
    with path.open("rb") as fileobj:
        head = fileobj.read(512)
    kind = sniff(head)
    if kind in ("gzip", "tar"):
        return
    if kind != "other":
        raise BuildFailed(f"build output is not an image: {path} is {kind}-compressed (unsupported)")
    if head.startswith(b"#!"):
        raise BuildFailed(
            f"build output is not an image: {path} is a script (a streamed image must be run "
            "and its output ingested with ingest_stream)"
        )
    raise BuildFailed(f"build output is not an image: {path} is neither a tar nor a gzip file")
