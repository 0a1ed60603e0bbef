"""Tests of docker-archive ingestion: both layer forms, outer gzip, member order, links, bad input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tracemalloc
from contextlib import nullcontext
from pathlib import Path

import pytest

from nixforge.errors import BuildFailed
from nixforge.oci import docker_archive
from nixforge.oci.docker_archive import ingest_docker_archive, ingest_stream
from nixforge.oci.layer_blobs import GzipDiffHasher
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.memory import MemoryBlobStore

from .archive_builders import (
    Layer,
    Member,
    RecordingStore,
    check_ingested,
    docker_archive_members,
    gzip_bytes,
    image_config,
    layer_tar,
    sample_layers,
    sha256,
    tar_bytes,
)


class PipeReader:
    """A non-seekable reader (like a process's stdout) that hands out small pieces."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        """Read at most 7000 bytes at a time."""
        return self._stream.read(7000 if size < 0 else min(size, 7000))


@pytest.fixture
def store() -> RecordingStore:
    """A fresh in-memory blob store that records what is published."""
    return RecordingStore(MemoryBlobStore())


@pytest.mark.parametrize("gzip_outer", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("manifest_first", [True, False], ids=["manifest-first", "manifest-last"])
def test_ingest_archive(store: RecordingStore, tmp_path: Path, gzip_outer: bool, manifest_first: bool) -> None:
    """Uncompressed and gzip layers both end up as gzip blobs with matching diff_ids."""
    layers = sample_layers()
    path = tmp_path / "image.tar"
    path.write_bytes(tar_bytes(docker_archive_members(layers, manifest_first=manifest_first), gzip_outer))
    manifests = ingest_docker_archive(store, path, {"org.example": "yes"})
    oci = check_ingested(store, manifests, [layer.tar for layer in layers])
    assert oci["annotations"] == {"org.example": "yes"}
    # The gzip layer is stored byte for byte; the tar layer was compressed on the way in.
    assert oci["layers"][1]["digest"] == sha256(layers[1].stored)
    assert oci["layers"][0]["digest"] != layers[0].diff_id
    # The config is stored unchanged.
    assert store.read(oci["config"]["digest"]) == image_config([layer.diff_id for layer in layers])


def test_ingest_stream_from_pipe(store: RecordingStore) -> None:
    """A gzip-compressed archive read from a non-seekable stream, manifest.json last."""
    layers = [Layer(layer_tar({f"f{i}": os.urandom(300_000)}), gzipped=bool(i % 2)) for i in range(4)]
    data = tar_bytes(docker_archive_members(layers, manifest_first=False), gzip_outer=True)
    manifests = ingest_stream(store, PipeReader(data))  # type: ignore[arg-type]
    check_ingested(store, manifests, [layer.tar for layer in layers])


def test_symlinked_and_hardlinked_layers(store: RecordingStore) -> None:
    """A layer.tar symlinked (or hard-linked) to an earlier one resolves to the same blob."""
    base = sample_layers()
    layers = [base[0], base[1], base[0], base[1]]
    members = docker_archive_members(layers, symlinks={2: 0})
    last = next(m for m in members if m.name.startswith("03"))
    first_gzip = next(m for m in members if m.name.startswith("01") and m.name.endswith("layer.tar"))
    members[members.index(last)] = Member(last.name, hardlink=first_gzip.name)
    manifests = ingest_stream(store, io.BytesIO(tar_bytes(members)))
    oci = check_ingested(store, manifests, [layer.tar for layer in layers])
    digests = [layer["digest"] for layer in oci["layers"]]
    assert digests[0] == digests[2] and digests[1] == digests[3]


def test_empty_image(store: RecordingStore) -> None:
    """An image without layers is still an image."""
    manifests = ingest_stream(store, io.BytesIO(tar_bytes(docker_archive_members([]))))
    assert json.loads(manifests.oci.body)["layers"] == []


def test_json_members_are_not_stored(store: RecordingStore) -> None:
    """Only layers and the config reach the store, not manifest.json, json or VERSION files."""
    layers = sample_layers()
    manifests = ingest_stream(store, io.BytesIO(tar_bytes(docker_archive_members(layers))))
    oci = json.loads(manifests.oci.body)
    assert sorted(store.published) == sorted(d["digest"] for d in [oci["config"], *oci["layers"]])


def test_gzip_hasher_multi_member_and_padding() -> None:
    """Concatenated gzip members hash as one stream; zero padding after the end is accepted."""
    hasher = GzipDiffHasher()
    data = gzip_bytes(b"a" * 5000) + gzip_bytes(b"b" * 7000) + b"\0" * 100
    for start in range(0, len(data), 13):
        hasher.update(data[start:start + 13])
    assert hasher.diff_id() == sha256(b"a" * 5000 + b"b" * 7000)


def test_gzip_hasher_rejects_garbage() -> None:
    """Bytes after the end that are neither padding nor a gzip member fail."""
    hasher = GzipDiffHasher()
    with pytest.raises(BuildFailed):
        hasher.update(gzip_bytes(b"abc") + b"garbage")


def _replace(members: list[Member], suffix: str, data: bytes) -> list[Member]:
    """Return members with the first one whose name ends with `suffix` given new data."""
    index = next(i for i, m in enumerate(members) if m.name.endswith(suffix))
    return [*members[:index], Member(members[index].name, data), *members[index + 1:]]


def _relink(members: list[Member], name: str, target: str) -> list[Member]:
    """Return members with `name` turned into a symlink to `target`."""
    return [Member(m.name, symlink=target) if m.name == name else m for m in members]


def _bad_archives() -> dict[str, bytes]:
    """Archives that must be refused, by the reason."""
    layers = sample_layers()
    good = docker_archive_members(layers)
    zstd_layer = b"\x28\xb5\x2f\xfd" + os.urandom(600)
    truncated_outer = tar_bytes(good, gzip_outer=True)
    truncated_outer = truncated_outer[: len(truncated_outer) - 30]
    return {
        "no-manifest": tar_bytes([m for m in good if m.name != "manifest.json"]),
        "missing-layer": tar_bytes([m for m in good if not m.name.startswith("01")]),
        "wrong-diff-id": tar_bytes(docker_archive_members(layers, diff_ids=[sha256(b"x"), layers[1].diff_id])),
        "too-few-diff-ids": tar_bytes(docker_archive_members(layers, diff_ids=[layers[0].diff_id])),
        "truncated-gzip-layer": tar_bytes(_replace(good, "01" + "ab" * 31 + "/layer.tar", layers[1].stored[:-20])),
        "zstd-layer": tar_bytes(_replace(good, "00" + "ab" * 31 + "/layer.tar", zstd_layer)),
        "json-as-layer": tar_bytes(_replace(good, "00" + "ab" * 31 + "/layer.tar", b'{"not": "a tar"}')),
        "zstd-outer": b"\x28\xb5\x2f\xfd" + os.urandom(2000),
        "truncated-outer-tar": tar_bytes(good)[:3000],
        "truncated-outer-gzip": truncated_outer,
        "manifest-not-json": tar_bytes(_replace(good, "manifest.json", b"[{]")),
        "manifest-empty-list": tar_bytes(_replace(good, "manifest.json", b"[]")),
        "dangling-symlink": tar_bytes(
            _relink(docker_archive_members(layers), "01" + "ab" * 31 + "/layer.tar", "../nowhere/layer.tar")
        ),
        "text-file": b"this is not an image\n" * 100,
        "empty": b"",
    }


@pytest.mark.parametrize("reason", sorted(_bad_archives()))
def test_bad_archives_fail(store: RecordingStore, reason: str) -> None:
    """Each broken archive raises BuildFailed and publishes no config."""
    with pytest.raises(BuildFailed) as caught:
        ingest_stream(store, io.BytesIO(_bad_archives()[reason]))
    assert caught.value.message
    configs = [digest for digest in store.published if store.read(digest).startswith(b"{")]
    assert configs == []


def test_zstd_layer_message(store: RecordingStore) -> None:
    """A zstd layer is named as an unsupported compression."""
    with pytest.raises(BuildFailed, match="unsupported layer compression"):
        ingest_stream(store, io.BytesIO(_bad_archives()["zstd-layer"]))


def test_small_files_are_bounded(store: RecordingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-layer files are held in memory only up to a total limit."""
    monkeypatch.setattr(docker_archive, "SMALL_TOTAL_LIMIT", 2000)
    members = docker_archive_members(sample_layers())
    junk = [Member(f"junk{i}", b"x" * 700) for i in range(3)]
    with pytest.raises(BuildFailed, match="too many non-layer files"):
        ingest_stream(store, io.BytesIO(tar_bytes(junk + members)))


def _write_big_layer(path: Path, size: int, gzip_layer: bool) -> str:
    """Write a layer tar holding a `size`-byte file of zeros, streaming; return its diff_id."""
    digest = hashlib.sha256()
    zeros = bytes(1 << 20)
    header = tarfile.TarInfo("big.bin")
    header.size = size
    pieces = [header.tobuf(format=tarfile.GNU_FORMAT)]
    pieces += [zeros] * (size // len(zeros))
    pieces.append(bytes(-size % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE))
    with path.open("wb") as raw, gzip.GzipFile(
        fileobj=raw, mode="wb", mtime=0, compresslevel=1
    ) if gzip_layer else nullcontext(raw) as sink:
        for piece in pieces:
            digest.update(piece)
            sink.write(piece)
    return "sha256:" + digest.hexdigest()


def _write_big_archive(path: Path, size: int, gzip_layer: bool) -> None:
    """Write a gzip-compressed docker-archive whose single layer holds `size` bytes of zeros."""
    layer_path = path.with_suffix(".layer")
    config = image_config([_write_big_layer(layer_path, size, gzip_layer)])
    manifest = json.dumps([{"Config": "config.json", "Layers": ["big/layer.tar"]}]).encode()
    with (
        path.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as outer,
        tarfile.open(fileobj=outer, mode="w|") as archive,
        layer_path.open("rb") as layer,
    ):
        for name, data in (("config.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("big/layer.tar")
        info.size = layer_path.stat().st_size
        archive.addfile(info, layer)
    layer_path.unlink()


@pytest.mark.parametrize("gzip_layer", [False, True], ids=["tar-layer", "gzip-layer"])
def test_big_layer_memory_stays_bounded(tmp_path: Path, gzip_layer: bool) -> None:
    """A 200 MB layer is ingested with well under 50 MB of peak allocation."""
    size = 200 << 20
    path = tmp_path / "big.tar.gz"
    _write_big_archive(path, size, gzip_layer)
    store = FilesystemBlobStore(str(tmp_path / "store"))
    tracemalloc.start()
    try:
        manifests = ingest_docker_archive(store, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, f"peak allocation {peak / 2**20:.1f} MiB"
    layer = json.loads(manifests.oci.body)["layers"][0]
    assert store.size(layer["digest"]) == layer["size"]
    with store.open(layer["digest"]) as blob:
        header = gzip.GzipFile(fileobj=blob).read(512)
    assert header[:7] == b"big.bin"
