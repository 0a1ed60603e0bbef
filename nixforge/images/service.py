"""ImageService: the registry's images as the API sees them: admit, resolve, and hand over to builds.

A pull reads top-down: the request is admitted (the policy, once, here), the name:tag resolved
(a fresh stored record is served from memory or the store), and otherwise handed to TagBuilds,
which locks, plans, builds and records it. A pull waits for a build at most `pull_wait` seconds;
then it is told to come back, and the build goes on.
"""

from __future__ import annotations

from typing import BinaryIO

from attrs import define, field
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nixforge.errors import BlobUnknown, BuildInProgress, ForgeError, NameUnknown, StoreUnavailable
from nixforge.images.blob_files import stored_blob
from nixforge.images.freshness import Freshness
from nixforge.images.interfaces import BlobFile, IImageService
from nixforge.images.policy import AccessPolicy
from nixforge.images.stored_images import StoredImages
from nixforge.images.tag_builds import BuildListener, TagBuilds, failure_reason
from nixforge.images.targets import BuildTarget, target_for
from nixforge.oci.documents import ImageManifests, ManifestDocument
from nixforge.store.interfaces import IBlobStore, IStoreKeeper, ITagIndex, TagRecord
from nixforge.store.memory import NoStoreKeeper

log = Logger()
RETRY_AFTER_BUILD = 10
"""Seconds a pull told that its image is still building is asked to wait before it retries."""


@implementer(IImageService)
@define(eq=False)
class ImageService:
    """The pull side of the registry over the tag index, the stored images and the builds."""

    reactor: IReactorTime
    policy: AccessPolicy
    store: IBlobStore
    index: ITagIndex
    images: StoredImages
    builds: TagBuilds
    freshness: Freshness
    pull_wait: float = 0.0
    keeper: IStoreKeeper = field(factory=NoStoreKeeper)

    @property
    def flake(self) -> str:
        """The configured flake reference."""
        return self.builds.locks.flake

    # -- what the metrics read ---------------------------------------------------------------

    @property
    def builds_running(self) -> int:
        """Builds holding a build slot now."""
        return self.builds.slots.running

    @property
    def builds_queued(self) -> int:
        """Builds waiting for a build slot."""
        return self.builds.slots.queued

    @property
    def manifest_cache_hits(self) -> int:
        """Manifests served from memory so far."""
        return self.images.cache.hits

    @property
    def manifest_cache_misses(self) -> int:
        """Manifest look-ups the memory cache could not answer so far."""
        return self.images.cache.misses

    # -- admission ----------------------------------------------------------------------------

    def _admit_name(self, name: str) -> BuildTarget:
        """The target of a repository the policy serves; NameUnknown otherwise."""
        self.policy.check_name(name)
        return target_for(name)

    def _admit(self, name: str, tag: str) -> BuildTarget:
        """The target of name:tag when the policy serves both; NameUnknown or ManifestUnknown otherwise."""
        target = self._admit_name(name)
        self.policy.check_tag(tag)
        return target

    def _records(self, name: str) -> list[TagRecord]:
        """The current records of `name` whose tags the policy serves now."""
        records = (self.index.get(name, tag) for tag in self.index.tags(name) if self.policy.allows_tag(tag))
        return [record for record in records if record is not None]

    # -- tags ---------------------------------------------------------------------------------

    def resolve_tag(self, name: str, tag: str, on_build: BuildListener = None) -> Deferred[ImageManifests]:
        """Both manifests of name:tag: from the index if fresh, else from a (shared) build.

        `on_build` is told the id of a build this pull starts.
        """
        cached = self._cached_tag(name, tag)
        if cached is not None:
            return succeed(cached)
        return ensureDeferred(self._resolve_tag(name, tag, on_build))

    def _cached_tag(self, name: str, tag: str) -> ImageManifests | None:
        """A fresh stored name:tag whose manifests are both in memory (no disk, JSON or coroutine); else None."""
        if not self.policy.allows_name(name) or self.policy.refusal(tag) is not None:
            return None  # the full path raises the right error
        record = self.index.get(name, tag)  # only names that map to a target were ever built and stored
        if record is None or self.freshness.is_stale(record):
            return None
        manifests = self.images.cached(record)
        if manifests is not None:
            self.keeper.pulled(name, tag)
        return manifests

    async def _resolve_tag(self, name: str, tag: str, on_build: BuildListener) -> ImageManifests:
        target = self._admit(name, tag)
        record = self.index.get(name, tag)
        if record is not None:
            try:
                manifests = await self.images.load(record)
            except StoreUnavailable:
                raise  # the store did not answer: the image may well be whole
            except ForgeError:
                log.warn("stored image {name}:{tag} is incomplete; rebuilding", name=name, tag=tag)
            else:
                # Only stored images count (a build's time is its first use), so made-up names
                # never fill the pull times.
                self.keeper.pulled(name, tag)
                if self.freshness.is_stale(record):
                    self.freshness.refresh_in_background(target, tag)
                return manifests
        return await self._waited(self.builds.run(target, tag, on_build=on_build), name, tag)

    def _waited(self, waiter: Deferred[ImageManifests], name: str, tag: str) -> Deferred[ImageManifests]:
        """`waiter`, or BuildInProgress once it has waited `pull_wait` seconds (the build goes on)."""
        if self.pull_wait <= 0:
            return waiter

        def still_building(result: object, timeout: float) -> Failure:
            build = self.builds.build_id(name, tag)
            detail: dict[str, object] = {"name": name, "tag": tag}
            if build is None:
                message = f"{name}:{tag} is still being planned after {timeout:g} s; retry shortly"
            else:
                message = (f"{name}:{tag} is still building after {timeout:g} s (build {build}); retry shortly, or "
                           f"follow its log at /-/builds/{build}/log")
                detail.update(build=build, build_log=f"/-/builds/{build}/log")
            return Failure(BuildInProgress(message, RETRY_AFTER_BUILD, detail))

        return waiter.addTimeout(self.pull_wait, self.reactor, onTimeoutCancel=still_building)

    # -- refresh ------------------------------------------------------------------------------

    def refresh(self, name: str | None = None) -> list[str]:
        """Re-resolve now every stored moving tag of `name` (of every repository when None).

        Failures remembered for those names are forgotten, so their next pull builds at once. Nothing
        waits: pulls of stored images keep being served while the refreshes run. Returns the
        `name:tag`s scheduled, sorted.
        """
        if name is not None:
            self._admit_name(name)
        return self.freshness.refresh_now(name)

    # -- digests and blobs --------------------------------------------------------------------

    def manifest_by_digest(self, name: str, digest: str) -> Deferred[ManifestDocument]:
        """The manifest of `name` with this digest, byte for byte as it was served by tag."""
        return ensureDeferred(self._manifest_by_digest(name, digest))

    async def _manifest_by_digest(self, name: str, digest: str) -> ManifestDocument:
        self._admit_name(name)
        document = await self.images.by_digest(name, digest)
        for record in self._records(name):
            if digest in (record.oci_digest, record.docker_digest):
                self.keeper.pulled(name, record.tag)  # a pull by digest keeps its image as fresh as by tag
        return document

    def referrers(self, name: str, digest: str) -> Deferred[list[ManifestDocument]]:
        """The SBOM artifacts of `name`'s current tags whose subject is `digest` (none if unknown)."""
        try:
            self._admit_name(name)
        except ForgeError as error:
            return fail(error)
        return ensureDeferred(self.images.referrers(self._records(name), digest))

    def blob(self, name: str, digest: str) -> Deferred[BlobFile]:
        """A stored blob that a current (or retained) manifest of `name` names; BlobUnknown otherwise."""
        try:
            self._admit_name(name)
        except ForgeError as error:
            return fail(error)
        manifests = self._manifests_of(name)
        unknown = BlobUnknown("blob unknown to registry", {"name": name, "digest": digest})
        if not manifests:
            return fail(unknown)
        named = self.images.names_blob(name, manifests, digest)
        if named is None:  # not yet known from memory: read the manifests once
            return ensureDeferred(self._blob_after_reading(name, manifests, digest, unknown))
        return self._blob_file(digest, unknown) if named else fail(unknown)

    async def _blob_after_reading(self, name: str, manifests: frozenset[str], digest: str,
                                  unknown: BlobUnknown) -> BlobFile:
        if not await self.images.blobs_named(name, manifests, digest):
            raise unknown
        return await self._blob_file(digest, unknown)

    def _blob_file(self, digest: str, unknown: BlobUnknown) -> Deferred[BlobFile]:
        def found(blob: BlobFile | None) -> BlobFile:
            if blob is None:
                raise unknown
            return blob
        return stored_blob(self.store, digest, self.images.run_in_thread).addCallback(found)

    def _manifests_of(self, name: str) -> frozenset[str]:
        """Every manifest digest of `name` served now: its allowed records', and retained ones of allowed tags."""
        digests: set[str] = set()
        for record in self._records(name):
            digests |= record.digests()
        digests.update(entry.digest for entry in self.index.superseded(name)
                       if self.policy.allows_tag(entry.tag) and self.index.has_manifest(name, entry.digest))
        return frozenset(digests)

    # -- discovery ----------------------------------------------------------------------------

    def tags(self, name: str) -> Deferred[list[str]]:
        """`latest` plus the tags (and commits) of `name` built so far that the policy serves now.

        A repository neither built nor offered by the flake's catalog is NAME_UNKNOWN.
        """
        return ensureDeferred(self._tags(name))

    async def _tags(self, name: str) -> list[str]:
        self._admit_name(name)
        tags = {tag for tag in self.index.tags(name) if self.policy.allows_tag(tag)}
        if not tags and name.removeprefix("packages/") not in await self._offered():
            raise NameUnknown("repository not built yet and not in the flake's catalog; "
                              "pull <name>:latest to build it", {"name": name})
        return sorted(tags | {"latest"})

    def repositories(self) -> Deferred[list[str]]:
        """The flake's catalog and every repository built so far, as far as the policy serves them."""
        return ensureDeferred(self._repositories())

    async def _repositories(self) -> list[str]:
        names = set(self.index.names()) | set(await self._offered())
        return sorted(name for name in names if self.policy.allows_name(name))

    async def _offered(self) -> list[str]:
        """The flake's catalog at the revision latest is locked to; [] (logged) when it can't be had."""
        catalog = self.builds.catalog
        if catalog is None:
            return []
        try:
            lock = await self.builds.locks.lock("latest")
        except ForgeError as error:
            log.warn("cannot lock the flake for its catalog: {reason}", reason=failure_reason(error))
            return []
        offered = await catalog.at(lock.locked)
        return offered.names() if offered is not None else []

    # -- read-only views for the web pages (no Nix, no pull recorded) ----------------------------

    def latest_catalog(self) -> tuple[str, float, list[str] | None] | None:
        """`latest`'s last locked reference, when it was locked, and its cached catalog; None before any lock."""
        lock = self.builds.locks.known("latest")
        if lock is None:
            return None
        catalog = self.builds.catalog.cached(lock.locked) if self.builds.catalog is not None else None
        names = None if catalog is None else [name for name in catalog.names() if self.policy.allows_name(name)]
        return lock.locked, lock.at, names

    def stored_records(self) -> list[TagRecord]:
        """The stored tags the policy serves now, as the tag index holds them, sorted by name and tag."""
        return [record for name in sorted(self.index.names()) if self.policy.allows_name(name)
                for record in self._records(name)]

    def open_stored(self, digest: str) -> BinaryIO:
        """Open a stored blob or manifest by digest (blocking: call it in a thread); BlobUnknown if absent."""
        return self.store.open(digest)
