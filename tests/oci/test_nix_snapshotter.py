"""The nix-snapshotter image: mountpoints and root symlinks in the layer, annotations, config, manifest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from nixforge.oci import media_types as mt
from nixforge.oci.nix_snapshotter import NIX_LAYER, NIX_STORE_PATH, closure_layer, snapshotter_image
from nixforge.oci.tar_writer import MTIME
from nixforge.store.memory import MemoryBlobStore


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {member.name: member for member in archive}


def fake_closure(tmp_path: Path) -> tuple[str, str]:
    root = tmp_path / "store" / "aaaa-top"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "top").write_text("#!/bin/sh\n")
    (root / "share" / "doc").mkdir(parents=True)
    (root / "lib").symlink_to("share")
    lib = tmp_path / "store" / "bbbb-file"
    lib.write_text("a file store path")
    return str(root), str(lib)


def test_mountpoints_and_root_links(tmp_path: Path) -> None:
    root, file_path = fake_closure(tmp_path)
    entries = members(closure_layer([root, file_path], root))
    assert entries[root.lstrip("/")].isdir()
    assert entries[file_path.lstrip("/")].isfile() and entries[file_path.lstrip("/")].size == 0
    assert entries["bin"].isdir() and entries["share/doc"].isdir()
    assert entries["bin/top"].issym() and entries["bin/top"].linkname == f"{root}/bin/top"
    assert entries["lib"].issym() and entries["lib"].linkname == f"{root}/lib"
    assert not any(name.startswith(root.lstrip("/") + "/") for name in entries)  # nothing of the paths' content
    assert all(member.mtime == MTIME and member.uid == 0 for member in entries.values())
    assert closure_layer([file_path, root], root) == closure_layer([root, file_path], root)


def test_the_image_documents(tmp_path: Path) -> None:
    root, file_path = fake_closure(tmp_path)
    store = MemoryBlobStore()
    base = {"architecture": "amd64", "os": "linux", "config": {"Entrypoint": [f"{root}/bin/top"], "Env": ["A=1"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}, "history": []}
    document = snapshotter_image(store, base, [file_path, root], root)
    manifest = json.loads(store.read(document.digest))
    assert document.media_type == manifest["mediaType"] == mt.OCI_MANIFEST
    [layer] = manifest["layers"]
    assert layer["mediaType"] == mt.OCI_LAYER_GZIP
    assert layer["annotations"] == {NIX_LAYER: "true", f"{NIX_STORE_PATH}0": root, f"{NIX_STORE_PATH}1": file_path}
    tar = gzip.decompress(store.read(layer["digest"]))
    config = json.loads(store.read(manifest["config"]["digest"]))
    assert manifest["config"]["mediaType"] == mt.OCI_CONFIG
    assert config == {"architecture": "amd64", "os": "linux", "config": base["config"],
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}}
