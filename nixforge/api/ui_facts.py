"""What the web pages show, gathered from what the services already hold: no Nix, no pull recorded."""

from __future__ import annotations

import json
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nixforge.api.builds import BuildBook
from nixforge.errors import BlobUnknown
from nixforge.oci import media_types as mt
from nixforge.oci.layer_paths import store_paths_in_layer
from nixforge.redaction import redact_flake_ref
from nixforge.store.interfaces import TagRecord

log = Logger()
MAX_LISTED_LAYER = 64 << 20
"""Layers bigger than this (compressed) are not read to list their store paths."""
MAX_STORED_SHOWN = 200
"""The overview lists at most this many stored tags."""
_SHOWN_QUERY = ("rev", "narHash")


class ImageFacts(Protocol):
    """The read-only views of the images service the pages use (nixforge.images.service.ImageService)."""

    flake: str

    def latest_catalog(self) -> tuple[str, float, list[str] | None] | None: ...

    def stored_records(self) -> list[TagRecord]: ...

    def open_stored(self, digest: str) -> BinaryIO: ...


@frozen
class StoreUsage:
    """The blob store's size as last measured, and its cap (None: no cap)."""

    bytes: int
    blobs: int
    cap: int | None


@frozen
class Layer:
    """One layer of an image: its digest, compressed size, and the store paths it holds (None: not read)."""

    digest: str
    size: int
    paths: tuple[str, ...] | None
    note: str = ""


@frozen
class Image:
    """One image manifest: digest, platform (for an index member), config and layers, and its SBOMs."""

    digest: str
    platform: str
    config: str
    size: int
    layers: tuple[Layer, ...]
    sboms: tuple[tuple[str, str], ...]  # (artifact manifest digest, SBOM blob digest)


@frozen
class StoredTag:
    """A stored tag: both manifest forms, when built and last pulled, its size, and its images."""

    name: str
    tag: str
    oci_digest: str
    docker_digest: str
    built: float
    pulled: float | None
    size: int
    images: tuple[Image, ...]


@frozen
class Overview:
    """The start page's facts."""

    flake: str
    locked: str | None
    revision: str | None
    resolved: float | None
    catalog: tuple[str, ...] | None
    stored: tuple[StoredTag, ...]
    running: tuple[dict[str, Any], ...]
    failures: tuple[dict[str, Any], ...]
    store: StoreUsage


def shown_revision(locked: str) -> str | None:
    """The git revision or NAR hash named in a locked flake reference's query, fit to show (or None)."""
    query = urlsplit(locked).query if "?" in locked else ""
    pairs = dict(part.partition("=")[::2] for part in query.split("&") if part)
    for key in _SHOWN_QUERY:
        if pairs.get(key):
            return f"{key}={unquote(pairs[key])}"
    return None


@define(eq=False)
class UiFacts:
    """Read the facts for the pages; every store read runs through `run_in_thread` (its own pool)."""

    images: ImageFacts
    builds: BuildBook
    run_in_thread: Callable[..., Deferred[Any]]
    store_usage: Callable[[], StoreUsage]
    last_pulled: Callable[[str, str], float | None]
    cache_size: int = 512
    _documents: OrderedDict[str, Any] = field(factory=OrderedDict, init=False)
    _paths: OrderedDict[str, Layer] = field(factory=OrderedDict, init=False)

    async def overview(self) -> Overview:
        """The flake, what `latest` is at, the catalog, what is stored, the builds, and the store's use."""
        latest = self.images.latest_catalog()
        locked, resolved, catalog = latest if latest is not None else (None, None, None)
        records = self.images.stored_records()[:MAX_STORED_SHOWN]
        stored = await self.stored_tags(records, with_layers=False)
        builds = self.builds.builds()
        return Overview(
            flake=redact_flake_ref(self.images.flake),
            locked=None if locked is None else redact_flake_ref(locked),
            revision=None if locked is None else shown_revision(locked),
            resolved=resolved,
            catalog=None if catalog is None else tuple(catalog),
            stored=tuple(stored),
            running=tuple(b for b in builds if b["state"] == "running"),
            failures=tuple(b for b in builds if b["state"] not in ("running", "success"))[:10],
            store=self.store_usage(),
        )

    def records_of(self, name: str) -> list[TagRecord]:
        """The stored tags of one repository."""
        return [record for record in self.images.stored_records() if record.name == name]

    def catalog_has(self, name: str) -> bool:
        """True if the cached catalog lists the name (`packages/<pkg>` as `<pkg>`)."""
        latest = self.images.latest_catalog()
        names = latest[2] if latest is not None else None
        return names is not None and name.removeprefix("packages/") in names

    async def stored_tags(self, records: list[TagRecord], with_layers: bool = True) -> list[StoredTag]:
        """The stored tags whose documents can be read; one that can't (GC took it meanwhile) is left out."""
        found = []
        for record in records:
            try:
                found.append(await self.stored_tag(record, with_layers))
            except (BlobUnknown, ValueError, KeyError, TypeError) as error:
                log.warn("the pages leave {name}:{tag} out: {error}", name=record.name, tag=record.tag, error=error)
        return found

    async def stored_tag(self, record: TagRecord, with_layers: bool = True) -> StoredTag:
        """A stored tag with its images (and, if asked, each layer's store paths)."""
        top = await self._document(record.oci_digest)
        members: list[tuple[str, str]] = []
        if top.get("mediaType") == mt.OCI_INDEX or "manifests" in top:
            for entry in top.get("manifests", []):
                platform = entry.get("platform") or {}
                label = "/".join(str(platform[k]) for k in ("os", "architecture", "variant") if k in platform)
                members.append((entry["digest"], label))
        else:
            members.append((record.oci_digest, ""))
        sboms = await self._sboms(record)
        images = [await self._image(digest, label, sboms.get(digest, ()), with_layers) for digest, label in members]
        return StoredTag(
            name=record.name, tag=record.tag, oci_digest=record.oci_digest, docker_digest=record.docker_digest,
            built=record.built_at, pulled=self.last_pulled(record.name, record.tag),
            size=sum(image.size for image in images), images=tuple(images),
        )

    async def _sboms(self, record: TagRecord) -> dict[str, tuple[tuple[str, str], ...]]:
        """Subject digest → its SBOM artifacts (manifest digest, SBOM blob digest)."""
        found: dict[str, list[tuple[str, str]]] = {}
        for digest in record.manifests:
            document = await self._document(digest)
            subject = document.get("subject") or {}
            layers = document.get("layers") or []
            if subject.get("digest") and layers:
                found.setdefault(subject["digest"], []).append((digest, layers[0]["digest"]))
        return {key: tuple(value) for key, value in found.items()}

    async def _image(self, digest: str, platform: str, sboms: tuple[tuple[str, str], ...],
                     with_layers: bool) -> Image:
        manifest = await self._document(digest)
        config = manifest.get("config") or {}
        descriptors = manifest.get("layers") or []
        layers = [await self._layer(d["digest"], int(d["size"])) if with_layers else Layer(d["digest"], int(d["size"]),
                                                                                          None)
                  for d in descriptors]
        size = int(config.get("size", 0)) + sum(layer.size for layer in layers)
        return Image(digest=digest, platform=platform, config=str(config.get("digest", "")), size=size,
                     layers=tuple(layers), sboms=sboms)

    async def _layer(self, digest: str, size: int) -> Layer:
        cached = self._paths.get(digest)
        if cached is not None:
            return cached
        if size > MAX_LISTED_LAYER:
            return Layer(digest, size, None, f"not read: larger than {MAX_LISTED_LAYER >> 20} MiB")
        try:
            paths = await self.run_in_thread(self._read_paths, digest)
            layer = Layer(digest, size, tuple(paths))
        except (BlobUnknown, tarfile.TarError, OSError, EOFError) as error:
            return Layer(digest, size, None, f"not read: {type(error).__name__}")
        self._remember(self._paths, digest, layer)
        return layer

    def _read_paths(self, digest: str) -> list[str]:
        with self.images.open_stored(digest) as blob:
            return store_paths_in_layer(blob)

    async def _document(self, digest: str) -> dict[str, Any]:
        cached = self._documents.get(digest)
        if cached is None:
            cached = json.loads(await self.run_in_thread(self._read, digest))
            self._remember(self._documents, digest, cached)
        return cached if isinstance(cached, dict) else {}

    def _read(self, digest: str) -> bytes:
        with self.images.open_stored(digest) as blob:
            return blob.read()

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
