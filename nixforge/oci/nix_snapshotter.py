"""The nix-snapshotter form of an image: one layer of mountpoints whose annotations name the closure.

As pdtpartners/nix-snapshotter's nix2container writes it: a gzip layer that holds an empty
mountpoint per store path (a directory, or an empty 0555 file for a file path) and, for the root,
a symlink from `/` for every file under it; the layer carries `containerd.io/snapshot/nix-layer`
and one `containerd.io/snapshot/nix-store-path.<i>` per path. The node's snapshotter mounts each
path from its own Nix store, fetched from its substituters. The config keeps the ordinary image's
entrypoint, env and platform; its `diff_ids` name the one layer.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Any

from nixforge.oci import media_types as mt
from nixforge.oci.documents import ManifestDocument, canonical_json, sha256_digest
from nixforge.oci.layer_writer import compress_layer
from nixforge.oci.tar_writer import TarStream
from nixforge.store.interfaces import IBlobStore

NIX_LAYER = "containerd.io/snapshot/nix-layer"
NIX_STORE_PATH = "containerd.io/snapshot/nix-store-path."
_PLATFORM_KEYS = ("architecture", "os", "variant", "os.version", "os.features")


def closure_layer(paths: Iterable[str], root: str | None) -> bytes:
    """The uncompressed tar: mountpoints for `paths`, then `/`-relative symlinks into `root`. Reads the store."""
    directories: set[str] = set()
    entries: dict[str, tuple[str, str]] = {}  # name → (kind, link target)

    def parents(name: str) -> None:
        parent = os.path.dirname(name)
        while parent and parent not in directories:
            directories.add(parent)
            parent = os.path.dirname(parent)

    for path in sorted(paths):
        name = path.lstrip("/")
        parents(name)
        if os.path.isdir(path) and not os.path.islink(path):
            directories.add(name)
        else:
            entries[name] = ("file", "")
    if root is not None and os.path.isdir(root) and not os.path.islink(root):
        for top, dirs, files in os.walk(root):
            relative = os.path.relpath(top, root)
            for directory in list(dirs):
                if os.path.islink(os.path.join(top, directory)):
                    dirs.remove(directory)
                    files.append(directory)
                else:
                    directories.add(os.path.normpath(os.path.join(relative, directory)))
            for file in files:
                name = os.path.normpath(os.path.join(relative, file))
                parents(name)
                if name not in directories:
                    entries[name] = ("link", os.path.join(top, file))
    sink = io.BytesIO()
    tar = TarStream(sink)
    for name in sorted(directories | set(entries)):
        if name in directories:
            tar.add_directory(name, 0o755)
        elif entries[name][0] == "file":
            tar.add_bytes(name, b"", 0o555)
        else:
            tar.add_symlink(name, entries[name][1])
    tar.close()
    return sink.getvalue()


def snapshotter_image(store: IBlobStore, base_config: dict[str, Any], paths: Iterable[str],
                      root: str | None) -> ManifestDocument:
    """Store the layer and config of the nix-snapshotter image and its manifest; return the manifest.

    Blocking (reads the store paths, writes blobs): run it in a worker thread.
    """
    ordered = sorted(paths)
    gz, diff_id = compress_layer(closure_layer(ordered, root))
    layer_digest, _ = store.put(gz)
    config: dict[str, Any] = {key: base_config[key] for key in _PLATFORM_KEYS if key in base_config}
    config["config"] = base_config.get("config", {})
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    config_body = canonical_json(config)
    store.put(config_body)
    annotations = {NIX_LAYER: "true", **{f"{NIX_STORE_PATH}{i}": path for i, path in enumerate(ordered)}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": sha256_digest(config_body), "size": len(config_body)},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": layer_digest, "size": len(gz),
                    "annotations": annotations}],
    }
    document = ManifestDocument(mt.OCI_MANIFEST, canonical_json(manifest))
    store.put(document.body)
    return document
