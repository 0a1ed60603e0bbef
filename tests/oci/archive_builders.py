"""Helpers that build docker-archives and OCI layouts for tests, and check ingested images."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from pathlib import Path
from typing import Any

from attrs import frozen

from nixforge.oci import media_types as mt
from nixforge.oci.documents import ImageManifests
from nixforge.store.interfaces import IBlobStore


def sha256(data: bytes) -> str:
    """Return `sha256:<hex>` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gzip_bytes(data: bytes) -> bytes:
    """Gzip `data` deterministically."""
    return gzip.compress(data, mtime=0)


def layer_tar(files: dict[str, bytes]) -> bytes:
    """Return an uncompressed tar holding `files` (path → content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@frozen
class Layer:
    """A test layer: its uncompressed tar, and whether the archive holds it gzipped."""

    tar: bytes
    gzipped: bool = False

    @property
    def stored(self) -> bytes:
        """The bytes the archive or layout holds for this layer."""
        return gzip_bytes(self.tar) if self.gzipped else self.tar

    @property
    def diff_id(self) -> str:
        """The digest of the uncompressed tar."""
        return sha256(self.tar)


def sample_layers() -> list[Layer]:
    """Two layers: one uncompressed, one gzip."""
    return [
        Layer(layer_tar({"etc/hello": b"hello\n", "bin/tool": b"\x7fELF" + bytes(range(256)) * 40})),
        Layer(layer_tar({"share/doc/readme": b"read me\n" * 1000}), gzipped=True),
    ]


def image_config(diff_ids: list[str]) -> bytes:
    """Return a minimal image config whose rootfs lists `diff_ids`."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/tool"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "test"}],
    }
    return json.dumps(config, indent=2).encode()


@frozen
class Member:
    """A member of a test tar: a regular file, or a symlink when `symlink` is set."""

    name: str
    data: bytes = b""
    symlink: str | None = None
    hardlink: str | None = None


def docker_archive_members(
    layers: list[Layer],
    *,
    manifest_first: bool = True,
    diff_ids: list[str] | None = None,
    symlinks: dict[int, int] | None = None,
) -> list[Member]:
    """Return the members of a docker-archive; `symlinks` maps a layer index to an earlier one."""
    config = image_config(diff_ids if diff_ids is not None else [layer.diff_id for layer in layers])
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_names = [f"{index:02d}{'ab' * 31}/layer.tar" for index in range(len(layers))]
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": ["test:latest"], "Layers": layer_names}]
    ).encode()
    members = [Member(config_name, config)]
    for index, (name, layer) in enumerate(zip(layer_names, layers, strict=True)):
        directory = name.split("/")[0]
        members.append(Member(directory + "/VERSION", b"1.0"))
        members.append(Member(directory + "/json", b'{"id": "%s"}' % directory.encode()))
        target = (symlinks or {}).get(index)
        if target is None:
            members.append(Member(name, layer.stored))
        else:
            members.append(Member(name, symlink="../" + layer_names[target]))
    members.append(Member("repositories", b'{"test": {"latest": "x"}}'))
    manifest_member = Member("manifest.json", manifest)
    return [manifest_member, *members] if manifest_first else [*members, manifest_member]


def tar_bytes(members: list[Member], gzip_outer: bool = False) -> bytes:
    """Serialise members into a tar (gzipped if asked)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        directories: set[str] = set()
        for member in members:
            directory = member.name.rpartition("/")[0]
            if directory and directory not in directories:
                directories.add(directory)
                info = tarfile.TarInfo(directory)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            info = tarfile.TarInfo(member.name)
            if member.symlink is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = member.symlink
                archive.addfile(info)
            elif member.hardlink is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = member.hardlink
                archive.addfile(info)
            else:
                info.size = len(member.data)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(member.data))
    data = buffer.getvalue()
    return gzip_bytes(data) if gzip_outer else data


def write_blob(root: Path, data: bytes) -> dict[str, Any]:
    """Write a blob into an OCI layout; return a partial descriptor (digest, size)."""
    digest = sha256(data)
    path = root / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def add_oci_image(
    root: Path, layers: list[Layer], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write config, layers and manifest into an OCI layout; return the manifest's descriptor."""
    config = write_blob(root, image_config([layer.diff_id for layer in layers]))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, **config},
        "layers": [
            {
                "mediaType": mt.OCI_LAYER_GZIP if layer.gzipped else mt.OCI_LAYER_TAR,
                **write_blob(root, layer.stored),
            }
            for layer in layers
        ],
    }
    if annotations:
        manifest["annotations"] = annotations
    return {"mediaType": mt.OCI_MANIFEST, **write_blob(root, json.dumps(manifest).encode())}


def write_index(root: Path, descriptors: list[dict[str, Any]]) -> None:
    """Write `oci-layout` and an `index.json` listing `descriptors`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
    (root / "index.json").write_text(json.dumps(index))


def write_oci_layout(root: Path, layers: list[Layer], annotations: dict[str, str] | None = None) -> None:
    """Write a one-image OCI layout."""
    write_index(root, [add_oci_image(root, layers, annotations)])


def inflate(data: bytes) -> bytes:
    """Decompress a complete gzip stream, failing if it is not one."""
    inflater = zlib.decompressobj(31)
    out = inflater.decompress(data) + inflater.flush()
    assert inflater.eof, "gzip stream is truncated"
    return out


def check_ingested(store: IBlobStore, manifests: ImageManifests, expected_tars: list[bytes]) -> dict[str, Any]:
    """Assert both manifests reference stored, gzip, correctly hashed blobs; return the OCI manifest."""
    oci = json.loads(manifests.oci.body)
    docker = json.loads(manifests.docker.body)
    assert manifests.oci.media_type == oci["mediaType"] == mt.OCI_MANIFEST
    assert manifests.docker.media_type == docker["mediaType"] == mt.DOCKER_MANIFEST
    assert manifests.oci.digest == sha256(manifests.oci.body)
    assert manifests.docker.digest == sha256(manifests.docker.body)
    assert manifests.oci.digest != manifests.docker.digest
    assert oci["config"]["mediaType"] == mt.OCI_CONFIG
    assert docker["config"]["mediaType"] == mt.DOCKER_CONFIG
    assert [layer["mediaType"] for layer in oci["layers"]] == [mt.OCI_LAYER_GZIP] * len(expected_tars)
    assert [layer["mediaType"] for layer in docker["layers"]] == [mt.DOCKER_LAYER_GZIP] * len(expected_tars)
    for form in (oci, docker):
        assert {k: form["config"][k] for k in ("digest", "size")} == {
            k: oci["config"][k] for k in ("digest", "size")
        }
        assert [(d["digest"], d["size"]) for d in form["layers"]] == [
            (d["digest"], d["size"]) for d in oci["layers"]
        ]
    for descriptor in [oci["config"], *oci["layers"]]:
        data = store.read(descriptor["digest"])
        assert store.size(descriptor["digest"]) == descriptor["size"] == len(data)
        assert sha256(data) == descriptor["digest"]
    config = json.loads(store.read(oci["config"]["digest"]))
    tars = [inflate(store.read(descriptor["digest"])) for descriptor in oci["layers"]]
    assert tars == expected_tars
    assert config["rootfs"]["diff_ids"] == [sha256(tar) for tar in tars]
    return oci


def write_layout_from_store(store: IBlobStore, manifests: ImageManifests, root: Path) -> None:
    """Write an ingested image out as an OCI layout (index.json + blobs), for real tools to read."""
    oci = json.loads(manifests.oci.body)
    for descriptor in [oci["config"], *oci["layers"]]:
        write_blob(root, store.read(descriptor["digest"]))
    descriptor = write_blob(root, manifests.oci.body)
    write_index(root, [{"mediaType": mt.OCI_MANIFEST, **descriptor}])


def write_dir_transport(store: IBlobStore, manifests: ImageManifests, root: Path) -> None:
    """Write the Docker form of an ingested image in skopeo's `dir:` transport layout."""
    docker = json.loads(manifests.docker.body)
    root.mkdir(parents=True)
    (root / "version").write_text("Directory Transport Version: 1.1\n")
    (root / "manifest.json").write_bytes(manifests.docker.body)
    for descriptor in [docker["config"], *docker["layers"]]:
        (root / descriptor["digest"].split(":")[1]).write_bytes(store.read(descriptor["digest"]))


class RecordingStore:
    """Wrap a blob store and remember the digest of every blob published through it."""

    def __init__(self, inner: IBlobStore) -> None:
        self.inner = inner
        self.published: list[str] = []

    def size(self, digest: str) -> int | None:
        """Delegate."""
        return self.inner.size(digest)

    def open(self, digest: str) -> Any:
        """Delegate."""
        return self.inner.open(digest)

    def read(self, digest: str) -> bytes:
        """Delegate."""
        return self.inner.read(digest)

    def put(self, data: bytes) -> tuple[str, int]:
        """Delegate and record."""
        digest, size = self.inner.put(data)
        self.published.append(digest)
        return digest, size

    def writer(self) -> Any:
        """Return a writer whose commit is recorded."""
        return _RecordingWriter(self, self.inner.writer())


class _RecordingWriter:
    """A blob writer that reports its committed digest to a RecordingStore."""

    def __init__(self, store: RecordingStore, inner: Any) -> None:
        self._store = store
        self._inner = inner

    def write(self, data: bytes) -> None:
        """Delegate."""
        self._inner.write(data)

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        """Delegate and record."""
        digest, size = self._inner.commit(expected_digest)
        self._store.published.append(digest)
        return digest, size

    def abort(self) -> None:
        """Delegate."""
        self._inner.abort()
