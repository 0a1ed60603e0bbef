"""Ingest a docker-archive (`docker save`, dockerTools) into the blob store in one streaming pass."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from attrs import frozen
from twisted.logger import Logger

from nixforge.errors import BuildFailed
from nixforge.oci.documents import ImageManifests, LayerBlob, build_manifests
from nixforge.oci.layer_writer import LayerWriter
from nixforge.store.interfaces import IBlobStore

log = Logger()

CHUNK = 1 << 20
"""Bytes read (and, for gzip, decompressed) at a time: memory stays bounded whatever the layer size."""

SMALL_LIMIT = 16 << 20
"""Members that are neither tar nor compressed and at most this big are kept in memory (JSON)."""

SMALL_TOTAL_LIMIT = 64 << 20
"""All in-memory members together may not exceed this (an archive of junk must not exhaust memory)."""

_MAX_LINKS = 16

GZIP_MAGIC = b"\x1f\x8b"
_OTHER_MAGIC = {
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}


def sniff(head: bytes) -> str:
    """Classify the first bytes of a file: "gzip", "zstd", "xz", "bzip2", "tar" or "other"."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    for magic, kind in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return kind
    if _is_tar_header(head):
        return "tar"
    return "other"


def _is_tar_header(block: bytes) -> bool:
    """Tell whether a 512-byte block is a tar header (valid checksum) or an end-of-archive block."""
    if len(block) < tarfile.BLOCKSIZE:
        return False
    block = block[: tarfile.BLOCKSIZE]
    if block == tarfile.NUL * tarfile.BLOCKSIZE:
        return True
    field = block[148:156].split(b"\0", 1)[0].strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    return stored in (unsigned, signed)


class GzipDiffHasher:
    """Hash the uncompressed content of a gzip stream fed in pieces, with bounded output per step."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._inflate = zlib.decompressobj(31)
        self._trailing = False

    def update(self, data: bytes) -> None:
        """Feed compressed bytes; raise BuildFailed on corrupt data."""
        try:
            while data:
                if self._inflate.eof:
                    data = self._next_member(data)
                    if not data:
                        return
                self._hash.update(self._inflate.decompress(data, CHUNK))
                while self._inflate.unconsumed_tail and not self._inflate.eof:
                    self._hash.update(self._inflate.decompress(self._inflate.unconsumed_tail, CHUNK))
                data = self._inflate.unused_data if self._inflate.eof else b""
        except zlib.error as error:
            raise BuildFailed(f"corrupt gzip layer: {error}") from error

    def _next_member(self, data: bytes) -> bytes:
        """Start the next member of a multi-member stream, or accept zero padding after the end."""
        if not self._trailing and data.startswith(GZIP_MAGIC[:1]):
            self._inflate = zlib.decompressobj(31)
            return data
        if data.count(0) == len(data):
            self._trailing = True
            return b""
        raise BuildFailed("corrupt gzip layer: garbage after the end of the stream")

    def diff_id(self) -> str:
        """Finish; return `sha256:<hex>` of the uncompressed bytes, BuildFailed if truncated."""
        try:
            self._hash.update(self._inflate.flush())
        except zlib.error as error:
            raise BuildFailed(f"corrupt gzip layer: {error}") from error
        if not self._inflate.eof:
            raise BuildFailed("truncated gzip layer: the stream ends before its end marker")
        return "sha256:" + self._hash.hexdigest()


def store_gzip_layer(store: IBlobStore, chunks: Iterable[bytes]) -> LayerBlob:
    """Store a gzip layer byte for byte, computing its diff_id by streaming decompression."""
    blob = store.writer()
    try:
        hasher = GzipDiffHasher()
        for chunk in chunks:
            hasher.update(chunk)
            blob.write(chunk)
        diff_id = hasher.diff_id()
        digest, size = blob.commit()
    except BaseException:
        blob.abort()
        raise
    return LayerBlob(digest, size, diff_id)


def store_tar_layer(store: IBlobStore, chunks: Iterable[bytes]) -> LayerBlob:
    """Gzip an uncompressed layer tar into the store (both hashes in one pass)."""
    with LayerWriter(store) as writer:
        for chunk in chunks:
            writer.write(chunk)
        return writer.close()


def read_chunks(fileobj: BinaryIO, head: bytes = b"", expected_size: int | None = None) -> Iterator[bytes]:
    """Yield `head`, then the rest of `fileobj` in CHUNK-sized pieces.

    With `expected_size`, raise BuildFailed when the data ends early (a truncated archive).
    """
    seen = len(head)
    if head:
        yield head
    while chunk := fileobj.read(CHUNK):
        seen += len(chunk)
        yield chunk
    if expected_size is not None and seen != expected_size:
        raise BuildFailed(f"truncated docker-archive: a member has {seen} of {expected_size} bytes")


def check_diff_ids(config: Any, layers: list[LayerBlob]) -> None:
    """Raise BuildFailed unless the config's rootfs.diff_ids are exactly the layers' diff_ids."""
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    expected = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(expected, list):
        raise BuildFailed("image config has no rootfs.diff_ids")
    actual = [layer.diff_id for layer in layers]
    if expected != actual:
        raise BuildFailed(
            "image layers do not match the config's rootfs.diff_ids",
            {"config": expected, "layers": actual},
        )


def parse_json(data: bytes, what: str) -> Any:
    """Parse JSON, raising BuildFailed with `what` in the message when it is not valid."""
    try:
        return json.loads(data)
    except ValueError as error:
        raise BuildFailed(f"{what} is not valid JSON: {error}") from error


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
    if kind in _OTHER_MAGIC.values():
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
