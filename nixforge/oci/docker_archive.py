"""Ingest a docker-archive (`docker save`, dockerTools) into the blob store in one streaming pass."""

from __future__ import annotations

import gzip
import os
import posixpath
import tarfile
import zlib
from typing import Any, BinaryIO

from attrs import frozen
from twisted.logger import Logger

from nixforge.errors import BuildFailed
from nixforge.oci.documents import ImageManifests, LayerBlob, build_manifests
from nixforge.oci.layer_blobs import (
    CHUNK,
    SMALL_LIMIT,
    UNSUPPORTED_COMPRESSIONS,
    check_diff_ids,
    parse_json,
    read_chunks,
    sniff,
    store_gzip_layer,
    store_tar_layer,
)
from nixforge.store.interfaces import IBlobStore

log = Logger()

SMALL_TOTAL_LIMIT = 64 << 20
"""All in-memory members together may not exceed this (an archive of junk must not exhaust memory)."""

_MAX_LINKS = 16


@frozen
class _Small:
    """A small non-layer member (JSON), kept in memory."""

    data: bytes


@frozen
class _Layer:
    """A member stored as a layer candidate."""

    blob: LayerBlob


@frozen
class _Unusable:
    """A member that cannot be a layer, and why."""

    reason: str


@frozen
class _Link:
    """A symbolic or hard link to another member (archive path)."""

    target: str


_Entry = _Small | _Layer | _Unusable | _Link


class _PrefixedReader:
    """A reader that returns `head` before the rest of `fileobj` (to sniff a stream's magic)."""

    def __init__(self, head: bytes, fileobj: BinaryIO) -> None:
        self._head = head
        self._fileobj = fileobj

    def read(self, size: int = -1) -> bytes:
        """Read up to `size` bytes (all with -1)."""
        if self._head:
            if size < 0:
                data, self._head = self._head + self._fileobj.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._fileobj.read(size)


def _normalise(name: str) -> str:
    """Normalise an archive path: no leading `./` or `/`, no `..` escaping the root."""
    path = posixpath.normpath("/" + name.replace("\\", "/"))
    return path.lstrip("/")


def ingest_docker_archive(
    store: IBlobStore, path: str | os.PathLike[str], annotations: dict[str, str] | None = None
) -> ImageManifests:
    """Ingest a docker-archive file (`.tar` or gzip-compressed `.tar.gz`). Blocking."""
    with open(path, "rb") as fileobj:
        return ingest_stream(store, fileobj, annotations)


def ingest_stream(
    store: IBlobStore, fileobj: BinaryIO, annotations: dict[str, str] | None = None
) -> ImageManifests:
    """Ingest a docker-archive read sequentially from `fileobj` (a file or a pipe). Blocking.

    Layers are stored as they pass; manifest.json may come anywhere in the archive.
    Raises BuildFailed when the stream is not a valid docker-archive.
    """
    head = b""
    while len(head) < 8 and (more := fileobj.read(8 - len(head))):
        head += more  # a pipe may hand out fewer bytes than asked
    kind = sniff(head)
    if kind in UNSUPPORTED_COMPRESSIONS:
        raise BuildFailed(f"unsupported docker-archive compression: {kind}")
    source: Any = _PrefixedReader(head, fileobj)
    if kind == "gzip":
        source = gzip.GzipFile(fileobj=source, mode="rb")
    members = _Members(store)
    try:
        with tarfile.open(fileobj=source, mode="r|") as archive:
            for member in archive:
                members.record(archive, member)
            while source.read(CHUNK):
                pass  # drain: verifies a gzip trailer and lets a producing pipe finish
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise BuildFailed(f"cannot read docker-archive: {error}") from error
    return _assemble(store, members, annotations)


class _Members:
    """What one pass over an archive found, by normalised path."""

    def __init__(self, store: IBlobStore) -> None:
        self._store = store
        self._entries: dict[str, _Entry] = {}
        self._held = 0

    def record(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Record one member: links by target, layers stored, small JSON kept in memory."""
        name = _normalise(member.name)
        if member.issym():
            target = member.linkname
            if not target.startswith("/"):
                target = posixpath.join(posixpath.dirname(name), target)
            self._entries[name] = _Link(_normalise(target))
        elif member.islnk():
            self._entries[name] = _Link(_normalise(member.linkname))
        elif member.isreg():
            member_file = archive.extractfile(member)
            if member_file is not None:
                self._entries[name] = self._read(member, member_file)

    def _read(self, member: tarfile.TarInfo, member_file: BinaryIO) -> _Entry:
        """Store a layer candidate, or keep a small file, or note why the member is unusable."""
        head = member_file.read(tarfile.BLOCKSIZE)
        kind = sniff(head)
        chunks = read_chunks(member_file, head, member.size)
        if kind == "gzip":
            return _Layer(store_gzip_layer(self._store, chunks))
        if kind == "tar":
            return _Layer(store_tar_layer(self._store, chunks))
        if kind != "other":
            return _Unusable(f"unsupported layer compression: {kind}")
        if member.size > SMALL_LIMIT:
            return _Unusable("not a tar or gzip layer")
        self._held += member.size
        if self._held > SMALL_TOTAL_LIMIT:
            raise BuildFailed("docker-archive holds too many non-layer files")
        return _Small(b"".join(chunks))

    def resolve(self, name: str) -> _Entry | None:
        """Look a path up, following links (bounded)."""
        entry = self._entries.get(_normalise(name))
        for _ in range(_MAX_LINKS):
            if not isinstance(entry, _Link):
                return entry
            entry = self._entries.get(entry.target)
        raise BuildFailed(f"docker-archive: too many levels of links at {name!r}")


def _assemble(
    store: IBlobStore, members: _Members, annotations: dict[str, str] | None
) -> ImageManifests:
    """Resolve manifest.json against the stored members and build both manifest forms."""
    manifest_entry = members.resolve("manifest.json")
    if not isinstance(manifest_entry, _Small):
        raise BuildFailed("docker-archive has no manifest.json")
    document = parse_json(manifest_entry.data, "manifest.json")
    if not isinstance(document, list) or not document or not isinstance(document[0], dict):
        raise BuildFailed("manifest.json does not list an image")
    image = document[0]
    if len(document) > 1:
        log.warn("docker-archive holds {count} images; using the first", count=len(document))
    config_name = image.get("Config")
    layer_names = image.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise BuildFailed("manifest.json entry lacks Config or Layers")
    config_entry = members.resolve(config_name)
    if not isinstance(config_entry, _Small):
        raise BuildFailed(f"docker-archive: config {config_name!r} is missing")
    config = parse_json(config_entry.data, f"config {config_name!r}")
    layers: list[LayerBlob] = []
    for layer_name in layer_names:
        entry = members.resolve(str(layer_name))
        if isinstance(entry, _Unusable):
            raise BuildFailed(f"docker-archive: layer {layer_name!r}: {entry.reason}")
        if not isinstance(entry, _Layer):
            raise BuildFailed(f"docker-archive: layer {layer_name!r} is missing or not a tar")
        layers.append(entry.blob)
    check_diff_ids(config, layers)
    config_digest, config_size = store.put(config_entry.data)
    return build_manifests(config_digest, config_size, layers, annotations)
