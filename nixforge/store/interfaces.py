"""The contracts of blob storage and of the tag index.

Every method here may block (disk I/O, fsync): callers on the reactor thread run them in a
thread pool, except `size`/`has`, which are a single stat and answered from memory where possible.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from attrs import field, frozen
from zope.interface import Attribute, Interface


class IBlobWriter(Interface):
    """A blob being written: bytes go to a hidden temporary file until `commit`."""

    def write(data: bytes) -> None:
        """Append bytes to the blob, hashing them as they pass."""

    def commit(expected_digest: str | None = None) -> tuple[str, int]:
        """Verify (against `expected_digest` if given), fsync and atomically publish the blob.

        Returns `(digest, size)`. Raises `nixforge.errors.DigestInvalid` on a mismatch, in which
        case nothing is published. Publishing a blob that already exists discards the new copy.
        """

    def abort() -> None:
        """Discard the temporary file; nothing becomes visible. Safe to call twice."""


class IBlobStore(Interface):
    """Blobs addressed by their sha256 digest, published atomically, never half-visible."""

    def size(digest: str) -> int | None:
        """Return the blob's size in bytes, or None when it is not stored."""

    def open(digest: str) -> BinaryIO:
        """Open the blob for binary reading; raise `nixforge.errors.BlobUnknown` when absent."""

    def read(digest: str) -> bytes:
        """Return a (small) blob's bytes; raise `BlobUnknown` when absent."""

    def writer() -> IBlobWriter:
        """Start writing a new blob."""

    def put(data: bytes) -> tuple[str, int]:
        """Store small bytes durably (idempotent); return `(digest, size)`."""


@frozen
class TagRecord:
    """What a (repository, tag) resolved to when it was last built.

    `oci_digest`/`docker_digest` are the two forms the tag serves (an image manifest, or an image
    index and a manifest list). `manifests` are the tag's other stored manifests: an index's
    members, and the SBOM artifact manifests of every image. Every blob the tag needs is named by
    one of these documents (config, layers, an artifact's empty config and SBOM blob).
    """

    name: str
    tag: str
    oci_digest: str
    docker_digest: str
    built_at: float
    source: str
    immutable: bool = False
    manifests: tuple[str, ...] = field(default=(), converter=tuple)  # index members, SBOM artifacts

    def digests(self) -> frozenset[str]:
        """Every manifest digest of the record: both forms and `manifests`."""
        return frozenset((self.oci_digest, self.docker_digest, *self.manifests))


class ITagIndex(Interface):
    """The durable map (name, tag) → TagRecord; survives restarts, updated atomically."""

    def get(name: str, tag: str) -> TagRecord | None:
        """Return the record, from memory."""

    def put(record: TagRecord) -> None:
        """Durably record (write temp, fsync, rename), then update memory. Blocks."""

    def tags(name: str) -> list[str]:
        """Return the repository's tags, sorted."""

    def names() -> list[str]:
        """Return every repository with at least one tag, sorted."""

    def replace(old: TagRecord, new: TagRecord) -> bool:
        """Put `new` only if `old` is still the current record of its tag; return whether it was.

        GC may evict a record at any time; re-putting it unconditionally could name deleted blobs.
        """

    def has_manifest(name: str, digest: str) -> bool:
        """Tell whether `digest` is one of the manifests (`TagRecord.digests`) of a current record of `name`.

        Digests a rebuild superseded count too for the retention window, so a client that
        resolved (or pinned) a tag before a rebuild can still fetch the manifest by its digest.
        """


class IStoreKeeper(Interface):
    """What the images service tells the store's housekeeping (GC); every method returns at once."""

    def pulled(name: str, tag: str) -> None:
        """name:tag was pulled now (kept in memory, saved now and then)."""

    def begin_build() -> int:
        """A build is about to write or reuse blobs: protect them from GC until `end_build`."""

    def end_build(token: int) -> None:
        """The build's record is in the index (or the build failed): its lease ends."""

    def stored() -> None:
        """A build stored an image: collect now if the store is over its cap."""

    def full() -> None:
        """Writing a blob hit a full disk: collect now."""


class ILockedRevisions(Interface):
    """Which git revisions nixforge itself locked a flake to, and from which tags; survives restarts.

    Revisions are per flake (the configured flake reference), not per repository: a revision is a
    commit of the whole flake, so one locked while serving any package vouches for every package.
    """

    def record(flake: str, revision: str, ref: str) -> None:
        """Durably note that `ref` (`latest`, a branch or a git tag) locked `flake` to `revision`.

        Writes nothing when that is already known. Blocks (write temp, fsync, rename).
        """

    def refs(flake: str, revision: str) -> frozenset[str]:
        """Return the tags that ever locked `flake` to `revision` (empty if none), from memory."""


@frozen
class StoredRecord:
    """A record's bytes and its version (an ETag): what a compare-and-swap names."""

    value: bytes
    version: str


class IRecordStore(Interface):
    """Small durable records (JSON documents) under `/`-separated keys, changed atomically.

    Keys are relative paths of `[A-Za-z0-9._-]` parts, none starting with a dot. Every method may
    block (disk, network): call them off the reactor.
    """

    def get(key: str) -> StoredRecord | None:
        """Return the record's bytes and version, or None when absent."""

    def put(key: str, value: bytes) -> str:
        """Write the record unconditionally (readers see the old or the new bytes); return its version."""

    def swap(key: str, value: bytes, version: str | None) -> str | None:
        """Write only if the record is still at `version` (None: only if absent).

        Return the new version, or None when another writer changed the record first.
        """

    def delete(key: str, version: str | None = None) -> bool:
        """Remove the record (only if still at `version`, when given); return whether it went."""

    def keys(prefix: str) -> list[str]:
        """Return every key starting with `prefix`, sorted."""

    def versions(prefix: str) -> dict[str, str]:
        """Return the version of every record whose key starts with `prefix` (one listing)."""


class ICollectableBlobStore(IBlobStore):
    """What GC may delete: every stored blob, and a delete that spares what builds still use."""

    leases = Attribute("The store's BlobLeases: builds hold one from their first blob until their record lands.")

    def digests() -> Iterator[tuple[str, int]]:
        """Yield `(digest, size)` of every stored blob."""

    def delete(digest: str, floor: int) -> int | None:
        """Delete blob `digest` unless touched at or after `floor`; return the bytes freed, or None."""

    def remove_abandoned() -> int:
        """Remove what dead writers left (temp files, incomplete uploads), never a live one's; return how many."""


class IReferences(Interface):
    """What a stored document references: how GC marks without knowing manifest formats."""

    def blobs(body: bytes) -> frozenset[str]:
        """Return the config and layer digests a manifest names; empty for other bytes."""

    def children(body: bytes) -> frozenset[str]:
        """Return the child manifest digests an image index names; empty for other bytes."""


class IRetainedIndex(ITagIndex):
    """The tag index as GC sees it: every record, the retained superseded digests, eviction."""

    def records() -> list[TagRecord]:
        """Return every current record."""

    def superseded(name: str) -> list[Any]:
        """Return `name`'s superseded digests (`.digest`, `.tag`, `.at`) still within the retention window."""

    def remove(record: TagRecord) -> bool:
        """Durably forget `record` (if still current) and its tag's superseded digests."""

    def forget_expired() -> list[str]:
        """Drop superseded digests past the retention window; return the names that changed."""


class IBlobLocations(Interface):
    """Blobs a client can fetch from the store itself (an object store), by a time-limited URL."""

    def url(digest: str, ttl: float) -> str:
        """Return a signed GET URL of the blob, valid `ttl` seconds; it is a secret: never log it."""


class IBlobStreams(Interface):
    """Blobs read straight from the store over the network (an object store), a byte range at a time."""

    def stream(digest: str, offset: int, length: int) -> BinaryIO:
        """Return a reader of `length` bytes of the blob from `offset` (one ranged GET); BlobUnknown when absent.

        Blocks, and so does every `read` of the reader: use them off the reactor, and close the reader.
        """
