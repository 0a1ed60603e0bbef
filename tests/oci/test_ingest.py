"""Tests of the ingest dispatcher, and of ingested images as real OCI tools see them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nixforge.errors import BuildFailed
from nixforge.oci.ingest import ingest_image
from nixforge.store.memory import MemoryBlobStore

from .archive_builders import (
    check_ingested,
    docker_archive_members,
    sample_layers,
    sha256,
    tar_bytes,
    write_dir_transport,
    write_layout_from_store,
    write_oci_layout,
)

SKOPEO = "/usr/bin/skopeo"


@pytest.fixture
def store() -> MemoryBlobStore:
    """A fresh in-memory blob store."""
    return MemoryBlobStore()


def _archive(gzip_outer: bool = False) -> bytes:
    return tar_bytes(docker_archive_members(sample_layers()), gzip_outer)


@pytest.mark.parametrize(
    ("name", "gzip_outer"),
    [("image.tar", False), ("image.tar.gz", True), ("image.tar", True), ("result", False)],
    ids=["tar", "tar.gz", "gzip-named-tar", "no-suffix"],
)
def test_archive_file(store: MemoryBlobStore, tmp_path: Path, name: str, gzip_outer: bool) -> None:
    """A docker-archive file is ingested whatever its name; gzip is found by its magic."""
    path = tmp_path / name
    path.write_bytes(_archive(gzip_outer))
    check_ingested(store, ingest_image(store, str(path)), [layer.tar for layer in sample_layers()])


def test_directory_with_one_archive(store: MemoryBlobStore, tmp_path: Path) -> None:
    """A build output directory holding one image archive (and other files) uses that archive."""
    (tmp_path / "hello.tar.gz").write_bytes(_archive(gzip_outer=True))
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "nix-support").mkdir()
    check_ingested(store, ingest_image(store, str(tmp_path)), [layer.tar for layer in sample_layers()])


def test_oci_layout_directory(store: MemoryBlobStore, tmp_path: Path) -> None:
    """An OCI layout directory is ingested as one, annotations passed through."""
    write_oci_layout(tmp_path, sample_layers())
    manifests = ingest_image(store, tmp_path, {"org.opencontainers.image.source": "flake"})
    oci = check_ingested(store, manifests, [layer.tar for layer in sample_layers()])
    assert oci["annotations"] == {"org.opencontainers.image.source": "flake"}


def _two_archives(root: Path) -> Path:
    (root / "a.tar").write_bytes(_archive())
    (root / "b.tar.gz").write_bytes(_archive(gzip_outer=True))
    return root


def _script(root: Path) -> Path:
    path = root / "stream-hello"
    path.write_text("#!/bin/sh\nexec python3 stream.py\n")
    return path


def _text(root: Path) -> Path:
    path = root / "hello.tar"
    path.write_text("hello world\n" * 100)
    return path


def _zstd(root: Path) -> Path:
    path = root / "hello.tar.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(1000))
    return path


NOT_IMAGES = {
    "missing": lambda root: root / "nothing-here",
    "empty-directory": lambda root: root,
    "two-archives": _two_archives,
    "script": _script,
    "text-named-tar": _text,
    "zstd-file": _zstd,
}


@pytest.mark.parametrize("kind", sorted(NOT_IMAGES))
def test_not_an_image(store: MemoryBlobStore, tmp_path: Path, kind: str) -> None:
    """Build outputs that are not images raise BuildFailed with a clear message."""
    path = NOT_IMAGES[kind](tmp_path)
    with pytest.raises(BuildFailed, match="build output is not an image"):
        ingest_image(store, str(path))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a real tool, failing the test with its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("gzip_outer", [False, True], ids=["tar", "tar.gz"])
def test_skopeo_accepts_the_oci_form(store: MemoryBlobStore, tmp_path: Path, gzip_outer: bool) -> None:
    """skopeo reads the ingested image as an OCI layout and verifies every digest while copying."""
    archive = tmp_path / "image.tar"
    archive.write_bytes(_archive(gzip_outer))
    manifests = ingest_image(store, str(archive))
    layout = tmp_path / "layout"
    write_layout_from_store(store, manifests, layout)
    raw = _run([SKOPEO, "inspect", "--raw", f"oci:{layout}"]).stdout.encode()
    assert sha256(raw) == manifests.oci.digest
    copied = tmp_path / "copied"
    _run([SKOPEO, "copy", "--quiet", f"oci:{layout}", f"dir:{copied}"])
    manifest = json.loads((copied / "manifest.json").read_bytes())
    oci = json.loads(manifests.oci.body)
    assert [d["digest"] for d in manifest["layers"]] == [d["digest"] for d in oci["layers"]]
    config = json.loads(_run([SKOPEO, "inspect", "--config", f"oci:{layout}"]).stdout)
    assert config["config"]["Entrypoint"] == ["/bin/tool"]


def test_skopeo_accepts_the_docker_form(store: MemoryBlobStore, tmp_path: Path) -> None:
    """The Docker schema2 form, laid out for skopeo's dir: transport, copies back to a docker-archive."""
    archive = tmp_path / "image.tar.gz"
    archive.write_bytes(_archive(gzip_outer=True))
    manifests = ingest_image(store, str(archive))
    source = tmp_path / "docker-form"
    write_dir_transport(store, manifests, source)
    inspected = json.loads(_run([SKOPEO, "inspect", f"dir:{source}"]).stdout)
    assert inspected["Layers"] == [d["digest"] for d in json.loads(manifests.docker.body)["layers"]]
    exported = tmp_path / "exported.tar"
    _run([SKOPEO, "copy", "--quiet", f"dir:{source}", f"docker-archive:{exported}:again:latest"])
    # skopeo writes the layers back uncompressed: ingesting its archive gives the same config
    # (same diff_ids) and the same layer content.
    other = MemoryBlobStore()
    again = ingest_image(other, str(exported))
    assert json.loads(again.oci.body)["config"] == json.loads(manifests.oci.body)["config"]
    check_ingested(other, again, [layer.tar for layer in sample_layers()])
