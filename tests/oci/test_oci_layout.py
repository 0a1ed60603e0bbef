"""Tests of OCI image layout ingestion: both layer types, index selection, blob verification."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixforge.errors import BuildFailed
from nixforge.oci import media_types as mt
from nixforge.oci.oci_layout import ingest_oci_layout
from nixforge.store.memory import MemoryBlobStore

from .archive_builders import (
    Layer,
    RecordingStore,
    add_oci_image,
    check_ingested,
    docker_archive_members,
    gzip_bytes,
    layer_tar,
    sample_layers,
    sha256,
    tar_bytes,
    write_blob,
    write_index,
    write_oci_layout,
)

SKOPEO = "/usr/bin/skopeo"


@pytest.fixture
def store() -> RecordingStore:
    """A fresh in-memory blob store that records what is published."""
    return RecordingStore(MemoryBlobStore())


def test_layout_with_both_layer_types(store: RecordingStore, tmp_path: Path) -> None:
    """A gzip layer is copied as is, an uncompressed one is gzipped; annotations are merged."""
    layers = sample_layers()
    write_oci_layout(tmp_path, layers, {"source": "layout", "both": "layout"})
    manifests = ingest_oci_layout(store, tmp_path, {"both": "caller", "extra": "1"})
    oci = check_ingested(store, manifests, [layer.tar for layer in layers])
    assert oci["layers"][1]["digest"] == sha256(layers[1].stored)
    assert oci["annotations"] == {"source": "layout", "both": "caller", "extra": "1"}
    config_blob = next((tmp_path / "blobs" / "sha256").glob("*"))  # any: check config kept as is below
    assert config_blob.exists()
    source_manifest = json.loads(
        (tmp_path / "blobs" / "sha256" / _index_digest(tmp_path).split(":")[1]).read_bytes()
    )
    assert oci["config"] == source_manifest["config"]


def _index_digest(root: Path) -> str:
    """Return the digest of the first manifest in a layout's index.json."""
    return str(json.loads((root / "index.json").read_text())["manifests"][0]["digest"])


def test_prefers_linux_amd64_and_follows_nested_index(store: RecordingStore, tmp_path: Path) -> None:
    """Among several platforms linux/amd64 wins, through a nested index."""
    arm = add_oci_image(tmp_path, [Layer(layer_tar({"arch": b"arm64"}))])
    amd = add_oci_image(tmp_path, [Layer(layer_tar({"arch": b"amd64"}), gzipped=True)])
    nested = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {**arm, "platform": {"os": "linux", "architecture": "arm64"}},
            {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    inner = {"mediaType": mt.OCI_INDEX, **write_blob(tmp_path, json.dumps(nested).encode())}
    write_index(tmp_path, [inner])
    manifests = ingest_oci_layout(store, tmp_path)
    check_ingested(store, manifests, [layer_tar({"arch": b"amd64"})])


def test_first_manifest_without_platforms(store: RecordingStore, tmp_path: Path) -> None:
    """Without platform information the first manifest is taken."""
    first = add_oci_image(tmp_path, [Layer(layer_tar({"n": b"1"}))])
    second = add_oci_image(tmp_path, [Layer(layer_tar({"n": b"2"}))])
    write_index(tmp_path, [first, second])
    check_ingested(store, ingest_oci_layout(store, tmp_path), [layer_tar({"n": b"1"})])


def _manifest_path(root: Path) -> Path:
    return root / "blobs" / "sha256" / _index_digest(root).split(":")[1]


def _rewrite_manifest(root: Path, change: Any) -> None:
    """Apply `change` to the layout's manifest and re-point index.json at the new bytes."""
    manifest = json.loads(_manifest_path(root).read_bytes())
    change(manifest)
    write_index(root, [{"mediaType": mt.OCI_MANIFEST, **write_blob(root, json.dumps(manifest).encode())}])


def _corrupt_layer(root: Path) -> None:
    manifest = json.loads(_manifest_path(root).read_bytes())
    path = root / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF
    path.write_bytes(bytes(data))


def _layer_not_tar(root: Path) -> None:
    def change(manifest: dict[str, Any]) -> None:
        manifest["layers"][0].update(write_blob(root, b"just some text, not a layer" * 50))

    _rewrite_manifest(root, change)


def _delete_layer(root: Path) -> None:
    manifest = json.loads(_manifest_path(root).read_bytes())
    (root / "blobs" / "sha256" / manifest["layers"][1]["digest"].split(":")[1]).unlink()


def _wrong_size(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["size"] -= 1


def _zstd(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"


def _swap_layers(manifest: dict[str, Any]) -> None:
    manifest["layers"].reverse()


def _bad_digest(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["digest"] = "sha256:../../etc"


def _unknown_media_type(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["mediaType"] = "application/octet-stream"


BREAKAGES = {
    "corrupt-layer": _corrupt_layer,
    "missing-layer": _delete_layer,
    "layer-not-tar": _layer_not_tar,
    "missing-index": lambda root: (root / "index.json").unlink(),
    "empty-index": lambda root: write_index(root, []),
    "wrong-size": lambda root: _rewrite_manifest(root, _wrong_size),
    "zstd-layer": lambda root: _rewrite_manifest(root, _zstd),
    "diff-id-order": lambda root: _rewrite_manifest(root, _swap_layers),
    "bad-digest": lambda root: _rewrite_manifest(root, _bad_digest),
    "unknown-media-type": lambda root: _rewrite_manifest(root, _unknown_media_type),
    "manifest-digest-mismatch": lambda root: _manifest_path(root).write_bytes(b"{}"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_layouts_fail(store: RecordingStore, tmp_path: Path, breakage: str) -> None:
    """Each broken layout raises BuildFailed; the config is never published."""
    write_oci_layout(tmp_path, sample_layers())
    BREAKAGES[breakage](tmp_path)
    with pytest.raises(BuildFailed):
        ingest_oci_layout(store, tmp_path)
    assert not any(store.read(digest).startswith(b"{") for digest in store.published)


def test_zstd_message(store: RecordingStore, tmp_path: Path) -> None:
    """A zstd layer is reported as an unsupported compression."""
    write_oci_layout(tmp_path, sample_layers())
    _rewrite_manifest(tmp_path, _zstd)
    with pytest.raises(BuildFailed, match="unsupported layer compression"):
        ingest_oci_layout(store, tmp_path)


def test_mislabelled_uncompressed_layers_from_skopeo(store: RecordingStore, tmp_path: Path) -> None:
    """skopeo 1.9's `dir:` output labels uncompressed layers tar+gzip; the content decides."""
    layers = [Layer(layer_tar({"a": b"a" * 3000})), Layer(layer_tar({"b": b"b" * 5000}))]
    archive = tmp_path / "image.tar"
    archive.write_bytes(tar_bytes(docker_archive_members(layers)))
    directory = tmp_path / "dir"
    subprocess.run(
        [SKOPEO, "copy", "--quiet", "--format", "oci", f"docker-archive:{archive}", f"dir:{directory}"],
        check=True, capture_output=True, timeout=120,
    )
    layout = tmp_path / "layout"
    manifest = (directory / "manifest.json").read_bytes()
    for descriptor in json.loads(manifest)["layers"] + [json.loads(manifest)["config"]]:
        write_blob(layout, (directory / descriptor["digest"].split(":")[1]).read_bytes())
    write_index(layout, [{"mediaType": mt.OCI_MANIFEST, **write_blob(layout, manifest)}])
    source = json.loads(manifest)
    assert [d["size"] for d in source["layers"]] == [len(layer.tar) for layer in layers]
    oci = check_ingested(store, ingest_oci_layout(store, layout), [layer.tar for layer in layers])
    assert [d["size"] for d in oci["layers"]] != [d["size"] for d in source["layers"]]


def test_gzip_layout_written_by_skopeo(store: RecordingStore, tmp_path: Path) -> None:
    """A layout whose layers skopeo gzipped (its default) ingests byte for byte."""
    layers = [Layer(layer_tar({"c": b"c" * 4000}))]
    archive = tmp_path / "image.tar"
    archive.write_bytes(tar_bytes(docker_archive_members(layers)))
    layout = tmp_path / "layout"
    subprocess.run(
        [SKOPEO, "copy", "--quiet", f"docker-archive:{archive}", f"oci:{layout}:latest"],
        check=True, capture_output=True, timeout=120,
    )
    source = json.loads(_manifest_path(layout).read_bytes())
    assert source["layers"][0]["mediaType"] == mt.OCI_LAYER_GZIP
    oci = check_ingested(store, ingest_oci_layout(store, layout), [layers[0].tar])
    assert oci["layers"][0]["digest"] == source["layers"][0]["digest"]


def test_not_a_layout(store: RecordingStore, tmp_path: Path) -> None:
    """A directory without oci-layout is refused."""
    shutil.copytree(Path(__file__).parent, tmp_path / "copy")
    with pytest.raises(BuildFailed, match="not an OCI image layout"):
        ingest_oci_layout(store, tmp_path / "copy")


def test_gzip_helper_roundtrip() -> None:
    """The builders' gzip is deterministic (the byte-for-byte assertions rely on it)."""
    assert gzip_bytes(b"x" * 100) == gzip_bytes(b"x" * 100)
