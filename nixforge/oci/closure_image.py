"""Assemble an OCI image straight from a package's runtime closure, reusing layers already stored."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from attrs import field, frozen
from twisted.logger import Logger

from nixforge.oci.documents import ImageManifests, LayerBlob, build_manifests, canonical_json, sha256_digest
from nixforge.oci.image_config import CA_BUNDLE, choose_command, image_config, write_customisation_layer
from nixforge.oci.image_index import Platform
from nixforge.oci.layer_writer import LayerWriter, compress_layer
from nixforge.oci.layering import DEFAULT_MAX_LAYERS, MAX_OVERLAY_LAYERS, StorePathLike, plan_layers
from nixforge.oci.tar_writer import DEFAULT_STORE_DIR, image_name, write_store_paths
from nixforge.store.interfaces import IBlobStore
from nixforge.store.layer_cache import LayerCache, layer_key

log = Logger()

IMAGE_STORE_DIR = "/nix/store"
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))
# The customisation layer (/bin links, /etc/passwd, /tmp) that comes on top of the closure's layers.
CUSTOMISATION_LAYERS = 1


def closure_budget(max_layers: int) -> int:
    """Layers the closure may take when `max_layers` counts every layer of the image (as
    streamLayeredImage's `maxLayers` does): the total, capped for overlayfs, less the customisation."""
    return max(1, min(MAX_OVERLAY_LAYERS, max_layers) - CUSTOMISATION_LAYERS)


@frozen
class PackageMeta:
    """What the image needs to know about the package besides its closure."""

    name: str
    out_path: str
    main_program: str | None = None
    labels: dict[str, str] = field(factory=dict)


def store_layer(
    store: IBlobStore, cache: LayerCache, paths: Sequence[str], store_dir: str = DEFAULT_STORE_DIR,
    cancel: threading.Event | None = None,
) -> LayerBlob:
    """Return the layer blob of `paths`, writing it (tar, gzip, both hashes in one pass) only if new."""
    key = layer_key(paths)
    blob = cache.get(key, store)
    if blob is not None:
        return blob
    with cache.exclusive(key):
        blob = cache.get(key, store)  # another image may have written it while we waited
        if blob is not None:
            return blob
        with LayerWriter(store) as writer:
            write_store_paths(writer, paths, store_dir, cancel=cancel)
            blob = writer.close()
        cache.put(key, blob)
    log.debug("stored layer {digest} with {count} store paths", digest=blob.digest, count=len(paths))
    return blob


def _store_small_layer(store: IBlobStore, tar: bytes) -> LayerBlob:
    """Gzip a small in-memory tar exactly as LayerWriter does; store it unless already there."""
    gz, diff_id = compress_layer(tar)
    digest = sha256_digest(gz)
    if store.size(digest) is None:
        digest, _ = store.put(gz)
    return LayerBlob(digest, len(gz), diff_id)


def _ca_bundle(paths: Sequence[str], store_dir: str) -> str | None:
    """Return the in-image path of the first CA bundle in the closure, if any."""
    for path in sorted(paths):
        base = image_name(path, store_dir)
        if os.path.lexists(os.path.join(store_dir, base, CA_BUNDLE)):
            return f"{IMAGE_STORE_DIR}/{base}/{CA_BUNDLE}"
    return None


def assemble_closure_image(
    store: IBlobStore,
    cache: LayerCache,
    closure: Sequence[StorePathLike],
    meta: PackageMeta,
    max_layers: int = DEFAULT_MAX_LAYERS,
    store_dir: str = DEFAULT_STORE_DIR,
    workers: int = DEFAULT_WORKERS,
    platform_pair: tuple[str, str] | None = None,
    cancel: threading.Event | None = None,
    platform: Platform | None = None,
) -> ImageManifests:
    """Build (or find) every layer of `meta.out_path`'s closure and return the image's manifests.

    Blocking: run it in a worker thread. Layers whose path set is cached and whose blob is in the
    store are not written again; new layers are written by up to `workers` threads. The result
    depends only on the closure, the package and the budget, so equal inputs give equal digests.
    `max_layers` counts every layer of the image, the customisation layer included.
    `store_dir` is where the closure is readable now; inside the image it is always /nix/store.
    Setting `cancel` stops it between files and chunks (BuildCancelled; no partial blob stays).
    `platform` (else `platform_pair`, else the host's) is what the config says it runs on.
    """
    paths = [info.path for info in closure]
    if meta.out_path not in paths:
        raise ValueError(f"{meta.out_path!r} is not in its own closure")
    groups = plan_layers(closure, closure_budget(max_layers))
    log.debug("assembling {name} from {paths} store paths in {layers} layers",
              name=meta.name, paths=len(paths), layers=len(groups))
    if workers > 1 and len(groups) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nixforge-layer") as pool:
            layers = list(pool.map(lambda group: store_layer(store, cache, group, store_dir, cancel), groups))
    else:
        layers = [store_layer(store, cache, group, store_dir, cancel) for group in groups]

    package_host = os.path.join(store_dir, image_name(meta.out_path, store_dir))
    package_image = f"{IMAGE_STORE_DIR}/{image_name(meta.out_path, store_dir)}"
    custom = io.BytesIO()
    write_customisation_layer(custom, package_host, package_image)
    layers.append(_store_small_layer(store, custom.getvalue()))

    entrypoint, cmd = choose_command(package_host, package_image, meta.name, meta.main_program)
    config = canonical_json(
        image_config(
            [layer.diff_id for layer in layers],
            package_image,
            entrypoint,
            cmd,
            meta.labels,
            _ca_bundle(paths, store_dir),
            (platform.os, platform.architecture) if platform is not None else platform_pair,
            platform.variant if platform is not None else None,
        )
    )
    config_digest = sha256_digest(config)
    if store.size(config_digest) is None:
        config_digest, _ = store.put(config)
    return build_manifests(config_digest, len(config), layers)
