"""ImageService: resolve tags and digests to stored images, building on demand, one build per image."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from attrs import define, evolve, field
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nixforge.errors import (
    BlobUnknown,
    BuildFailed,
    BuildTimedOut,
    ForgeError,
    ManifestUnknown,
    NameUnknown,
    StoreFull,
    StoreUnavailable,
    TooManyBuilds,
)
from nixforge.images.build_events import BuildStart, IBuildObserver, NoBuildObserver, build_request
from nixforge.images.builder import BuildPlan, Stored
from nixforge.images.catalog import FlakeCatalog
from nixforge.images.failure_memory import FAILURE_TTL, FailureMemory
from nixforge.images.interfaces import BlobFile, IImageService
from nixforge.images.manifest_cache import ManifestCache
from nixforge.images.missing_cache import MISSING_TTL, MissingCache
from nixforge.images.policy import AccessPolicy
from nixforge.images.shared_builds import SharedBuilds
from nixforge.images.single_flight import SingleFlight
from nixforge.images.systems import SystemsPlan
from nixforge.images.targets import BuildTarget, flake_ref_for, is_immutable, target_for
from nixforge.nix.log_lines import build_lines
from nixforge.oci.documents import ImageManifests, ManifestDocument
from nixforge.oci.image_index import Platform, stored_manifests
from nixforge.oci.referrers import subject_digest
from nixforge.store.interfaces import IBlobStore, IStoreKeeper, ITagIndex, TagRecord
from nixforge.store.memory import NoStoreKeeper

log = Logger()
LOGGED_TAIL_LINES = 15


def failure_reason(error: BaseException) -> str:
    """Why a build failed, for the log: the message, Nix's error and the last lines of its log."""
    text = str(error)
    detail = getattr(error, "detail", None)
    if isinstance(detail, dict):
        if isinstance(detail.get("error"), str) and detail["error"] != text:
            text += ": " + detail["error"]
        lines = detail.get("log")
        if isinstance(lines, list) and lines:
            text += "\n  log tail:\n" + "\n".join(f"    {line}" for line in lines[-LOGGED_TAIL_LINES:])
    return text


class Builder(Protocol):
    """What the service needs of a builder (nixforge.images.systems.SystemsBuilder)."""

    async def plan(
        self, target: BuildTarget, flake_ref: str, tag: str, refresh: bool = False
    ) -> BuildPlan | SystemsPlan: ...

    async def build(self, plan: BuildPlan | SystemsPlan, stored: Stored | None = None) -> ImageManifests: ...


@implementer(IImageService)
@define(eq=False)
class ImageService:
    """The registry's view of images: the tag index first, Nix when it has nothing fresh.

    Every request is first put to the AccessPolicy: a refused name or tag fails before the index
    is read or anything is planned, so it never starts a Nix process.
    """

    reactor: IReactorTime
    builder: Builder
    store: IBlobStore
    index: ITagIndex
    run_in_thread: Callable[..., Deferred[Any]]
    flake: str
    policy: AccessPolicy
    refresh_interval: float = 300.0
    max_builds: int = 2
    max_queued_builds: int = 16
    cache_size: int = 50
    keeper: IStoreKeeper = field(factory=NoStoreKeeper)
    catalog: FlakeCatalog | None = None
    failure_ttl: float = FAILURE_TTL
    host_platform: Platform | None = None
    observer: IBuildObserver = field(factory=NoBuildObserver)
    shared_builds: SharedBuilds | None = None  # replicas on one bucket: one build across them
    _flights: SingleFlight = field(factory=SingleFlight, init=False)
    _slots: DeferredSemaphore = field(init=False)
    _probes: DeferredSemaphore = field(init=False)
    _missing: MissingCache = field(factory=MissingCache, init=False)
    _cache: ManifestCache = field(init=False)
    _refresh_failed_at: dict[tuple[str, str], float] = field(factory=dict, init=False)
    _failures: FailureMemory = field(init=False)
    # tag → (locked flake reference, when it was seen): the last revision any plan locked the tag to.
    _locks: dict[str, tuple[str, float]] = field(factory=dict, init=False)
    _queued_refreshes: set[tuple[str, str]] = field(factory=set, init=False)
    _catalog_lock_stale: bool = field(default=False, init=False)
    _catalog_retry_at: float = field(default=float("-inf"), init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = DeferredSemaphore(self.max_builds)
        self._probes = DeferredSemaphore(self.max_builds * 2)
        self._cache = ManifestCache(self.cache_size)
        self._failures = FailureMemory(self.failure_ttl)

    @property
    def builds_running(self) -> int:
        """Builds holding a build slot now."""
        return self.max_builds - self._slots.tokens

    @property
    def builds_queued(self) -> int:
        """Builds waiting for a build slot."""
        return len(self._slots.waiting)

    @property
    def manifest_cache_hits(self) -> int:
        """Manifests served from memory so far."""
        return self._cache.hits

    @property
    def manifest_cache_misses(self) -> int:
        """Manifest look-ups the memory cache could not answer so far."""
        return self._cache.misses

    # -- tags ---------------------------------------------------------------------------------

    def resolve_tag(self, name: str, tag: str) -> Deferred[ImageManifests]:
        """Both manifests of name:tag: from the index if fresh, else from a (shared) build."""
        cached = self._cached_tag(name, tag)
        if cached is not None:
            return succeed(cached)
        return ensureDeferred(self._resolve_tag(name, tag))

    def _cached_tag(self, name: str, tag: str) -> ImageManifests | None:
        """A fresh stored name:tag whose manifests are both in memory (no disk, JSON or coroutine); else None."""
        if not self.policy.allows_name(name) or self.policy.refusal(tag) is not None:
            return None  # the full path raises the right error
        record = self.index.get(name, tag)  # only names that map to a target were ever built and stored
        if record is None or self._is_stale(record):
            return None
        manifests = self._cache.image(record.oci_digest)
        if manifests is None or manifests.docker.digest != record.docker_digest:
            return None
        self.keeper.pulled(name, tag)
        return manifests

    async def _resolve_tag(self, name: str, tag: str) -> ImageManifests:
        self.policy.check_name(name)
        self.policy.check_tag(tag)
        target = target_for(name)
        record = self.index.get(name, tag)
        if record is not None:
            try:
                manifests = await self._load(record)
            except StoreUnavailable:
                raise  # the store did not answer: the image may well be whole
            except ForgeError:
                log.warn("stored image {name}:{tag} is incomplete; rebuilding", name=name, tag=tag)
            else:
                # Only stored images count (a build's time is its first use), so made-up names
                # never fill the pull times.
                self.keeper.pulled(name, tag)
                if self._is_stale(record):
                    self._refresh_in_background(target, tag)
                return manifests
        return await self._flights.run((name, tag), lambda: ensureDeferred(self._build(target, tag)))

    def _is_stale(self, record: TagRecord) -> bool:
        if record.immutable:
            return False
        now = self.reactor.seconds()
        failed_at = self._refresh_failed_at.get((record.name, record.tag), float("-inf"))
        return (now - record.built_at >= self.refresh_interval
                and now - failed_at >= self.refresh_interval)

    def _refresh_in_background(self, target: BuildTarget, tag: str) -> None:
        if self._flights.running((target.name, tag)):
            return
        self._start_refresh(target, tag)

    def _start_refresh(self, target: BuildTarget, tag: str) -> None:
        key = (target.name, tag)
        log.info("refreshing {name}:{tag} in the background", name=target.name, tag=tag)

        def failed(reason: Failure) -> None:
            self._refresh_failed_at[key] = self.reactor.seconds()
            log.warn("background refresh of {name}:{tag} failed: {error}",
                     name=target.name, tag=tag, error=reason.getErrorMessage())

        self._flights.run(key, lambda: ensureDeferred(self._build(target, tag))).addErrback(failed)

    async def _build(self, target: BuildTarget, tag: str) -> ImageManifests:
        """Plan (lock the flake, probe the package), then build unless the lock is unchanged.

        A moving tag resolved before (stored, or locked by an earlier plan) is fetched again
        (`--refresh`); a build that failed at the revision the tag is still locked to fails again
        from memory, without Nix.
        """
        key = (target.name, tag)
        self._raise_if_known_missing(key)
        self._raise_if_failed_before(target.name, tag)
        flake_ref = flake_ref_for(self.flake, tag)
        refresh = not is_immutable(tag) and (tag in self._locks or self.index.get(target.name, tag) is not None)
        planning = self.reactor.seconds()
        try:
            plan = await self._limited(self._probes, lambda: self.builder.plan(target, flake_ref, tag, refresh))
        except (NameUnknown, ManifestUnknown) as error:
            self._missing.remember(key, error, self.reactor.seconds() + MISSING_TTL)
            raise
        self._locks[tag] = (plan.locked, self.reactor.seconds())
        if plan.revision is not None and self.policy.vouches_for_locks_of(tag):
            await self.run_in_thread(self.policy.remember_lock, tag, plan.revision)
        record = self.index.get(target.name, tag)
        if record is not None and record.source == plan.locked:
            try:
                manifests = await self._load(record)
            except StoreUnavailable:
                raise
            except ForgeError:
                pass  # stored image incomplete: build it again
            else:
                # GC may have evicted the record meanwhile: then its blobs may be gone, build again.
                if await self.run_in_thread(self.index.replace, record,
                                            evolve(record, built_at=self.reactor.seconds())):
                    self._refresh_failed_at.pop(key, None)
                    log.info("{name}:{tag} unchanged at {locked}", name=target.name, tag=tag, locked=plan.locked)
                    return manifests
        held = None
        if self.shared_builds is not None:
            outcome = await self.shared_builds.hold_or_wait(target.name, tag, plan.locked, unusable=record)
            if isinstance(outcome, TagRecord):
                return await self._load(outcome)
            held = outcome
        started = self.reactor.seconds()
        build_id = uuid.uuid4().hex[:12]
        note = build_request.get()
        if note is not None and note.build_id is None:
            note.build_id = build_id
        self.observer.build_started(BuildStart(build_id, target.name, tag, plan.locked, plan.revision, started,
                                               started - planning))
        build_lines.set(lambda line: self.observer.build_line(build_id, line))
        log.info("build started {name}:{tag} from {flake} (build {build})", name=target.name, tag=tag,
                 flake=plan.locked, build=build_id)

        async def record_tag(manifests: ImageManifests) -> None:
            log.debug("storing the tag record of {name}:{tag}", name=target.name, tag=tag)
            await self.run_in_thread(self.index.put, TagRecord(
                name=target.name,
                tag=tag,
                oci_digest=manifests.oci.digest,
                docker_digest=manifests.docker.digest,
                built_at=self.reactor.seconds(),
                source=plan.locked,
                immutable=is_immutable(tag),
                manifests=tuple(document.digest for document in manifests.related()),
            ))

        async def build() -> ImageManifests:
            self.observer.build_phase(build_id, "build", self.reactor.seconds())
            return await self.builder.build(plan, record_tag)

        lease = self.keeper.begin_build()  # GC spares what this build stores until it is indexed
        try:
            try:
                manifests = await self._limited(self._slots, build)
            except Exception as error:
                _name_build(error, build_id)
                self.observer.build_finished(build_id, "timeout" if isinstance(error, BuildTimedOut) else "failure",
                                             self.reactor.seconds(), str(error))
                raise
        except (NameUnknown, ManifestUnknown) as error:
            # e.g. an application whose containers output holds no such image: remember it too.
            self._missing.remember(key, error, self.reactor.seconds() + MISSING_TTL)
            log.info("build of {name}:{tag} found nothing to serve: {reason}", name=target.name, tag=tag,
                     reason=failure_reason(error))
            raise
        except Exception as error:
            log.info("build failed {name}:{tag}: {reason}", name=target.name, tag=tag,
                     reason=failure_reason(error))
            if isinstance(error, StoreFull):
                self.keeper.full()
            if isinstance(error, (BuildFailed, BuildTimedOut)):
                self._failures.remember(target.name, tag, plan.locked, error, self.reactor.seconds())
            raise
        finally:
            self.keeper.end_build(lease)
            if held is not None:
                held.release()
        self.keeper.stored()
        self._refresh_failed_at.pop(key, None)
        self._cache.add_image(manifests)
        self.observer.build_finished(build_id, "success", self.reactor.seconds(), None)
        log.info("build finished {name}:{tag} in {seconds:.1f}s: {digest}", name=target.name, tag=tag,
                 seconds=self.reactor.seconds() - started, digest=manifests.oci.digest)
        return manifests

    async def _limited(self, slots: DeferredSemaphore, step: Callable[[], Any]) -> Any:
        """Run `step` holding one of `slots`; refuse with TooManyBuilds when too many wait."""
        if len(slots.waiting) >= self.max_queued_builds:
            raise TooManyBuilds("too many builds queued; retry later", retry_after=30)
        await slots.acquire()
        try:
            return await step()
        finally:
            slots.release()

    def _raise_if_known_missing(self, key: tuple[str, str]) -> None:
        error = self._missing.get(key, self.reactor.seconds())
        if error is not None:
            raise error

    def _raise_if_failed_before(self, name: str, tag: str) -> None:
        lock = self._locks.get(tag)
        error = self._failures.get(name, tag, self.reactor.seconds(), lock[0] if lock else None)
        if error is not None:
            log.info("{name}:{tag} failed to build at this revision less than {ttl:g} s ago; "
                     "answering that failure again", name=name, tag=tag, ttl=self.failure_ttl)
            raise error

    # -- refresh ------------------------------------------------------------------------------

    def refresh(self, name: str | None = None) -> list[str]:
        """Re-resolve now every stored moving tag of `name` (of every repository when None).

        Failures remembered for those names are forgotten, so their next pull builds at once, and
        the catalog checks the lock of latest again. Nothing waits: pulls of stored images keep
        being served while the refreshes run. Returns the `name:tag`s scheduled, sorted.
        """
        if name is not None:
            self.policy.check_name(name)
            target_for(name)
        self._failures.forget(name)
        self._missing.forget(name)
        self._catalog_lock_stale = True
        self._catalog_retry_at = float("-inf")
        names = [name] if name is not None else self.index.names()
        scheduled = []
        for each in names:
            if not self.policy.allows_name(each):
                continue
            for tag in self.index.tags(each):
                if is_immutable(tag) or not self.policy.allows_tag(tag):
                    continue
                self._refresh_now(target_for(each), tag)
                scheduled.append(f"{each}:{tag}")
        return sorted(scheduled)

    def _refresh_now(self, target: BuildTarget, tag: str) -> None:
        key = (target.name, tag)
        if not self._flights.running(key):
            self._start_refresh(target, tag)
            return
        # The build running now may have locked the revision before the push: run once more after it.
        if key in self._queued_refreshes:
            return
        self._queued_refreshes.add(key)

        def again(_: object) -> None:
            self._queued_refreshes.discard(key)
            self._refresh_now(target, tag)

        self._flights.run(key, _already_running).addBoth(again)

    async def _load(self, record: TagRecord) -> ImageManifests:
        oci = await self._document(record.oci_digest)
        docker = await self._document(record.docker_digest)
        related = [await self._document(digest) for digest in record.manifests]
        try:
            manifests = stored_manifests(oci, docker, related, self.host_platform)
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise ManifestUnknown("stored index is inconsistent", {"digest": oci.digest}) from error
        self._cache.add_image(manifests)
        return manifests

    async def _document(self, digest: str) -> ManifestDocument:
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        body = await self.run_in_thread(self._read_manifest, digest)
        media_type = json.loads(body).get("mediaType")
        if not isinstance(media_type, str):
            raise ManifestUnknown("stored manifest has no media type", {"digest": digest})
        return ManifestDocument(media_type, body)

    def _read_manifest(self, digest: str) -> bytes:
        try:
            return self.store.read(digest)
        except BlobUnknown:
            raise ManifestUnknown("manifest unknown", {"digest": digest}) from None

    # -- digests ------------------------------------------------------------------------------

    def manifest_by_digest(self, name: str, digest: str) -> Deferred[ManifestDocument]:
        """The manifest of `name` with this digest, byte for byte as it was served by tag."""
        return ensureDeferred(self._manifest_by_digest(name, digest))

    async def _manifest_by_digest(self, name: str, digest: str) -> ManifestDocument:
        self.policy.check_name(name)
        if not self.index.has_manifest(name, digest):
            raise ManifestUnknown("manifest unknown", {"name": name, "digest": digest})
        for tag in self.index.tags(name):
            record = self.index.get(name, tag)
            if record is not None and digest in (record.oci_digest, record.docker_digest):
                self.keeper.pulled(name, tag)  # a pull by digest keeps its image as fresh as by tag
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        document = await self._document(digest)
        self._cache.add(document)
        return document

    def referrers(self, name: str, digest: str) -> Deferred[list[ManifestDocument]]:
        """The SBOM artifacts of `name`'s current tags whose subject is `digest` (none if unknown)."""
        return ensureDeferred(self._referrers(name, digest))

    async def _referrers(self, name: str, digest: str) -> list[ManifestDocument]:
        self.policy.check_name(name)
        found: dict[str, ManifestDocument] = {}
        for tag in self.index.tags(name):
            record = self.index.get(name, tag)
            if record is None or not self.policy.allows_tag(tag) or digest not in record.digests():
                continue
            try:
                manifests = await self._load(record)
            except ForgeError:
                continue  # an incomplete stored image has no referrers to show
            for document in manifests.related():
                if subject_digest(document) == digest:
                    found[document.digest] = document
        return [found[key] for key in sorted(found)]

    def blob(self, name: str, digest: str) -> Deferred[BlobFile]:
        """A stored blob of a repository this registry has built."""
        try:
            self.policy.check_name(name)
        except NameUnknown as error:
            return fail(error)
        if not self.index.tags(name):
            return fail(BlobUnknown("blob unknown to registry", {"name": name, "digest": digest}))
        size = self.store.size(digest)
        if size is None:
            return fail(BlobUnknown("blob unknown to registry", {"digest": digest}))
        return succeed(BlobFile(digest=digest, size=size, opener=lambda: self.store.open(digest)))

    # -- discovery ----------------------------------------------------------------------------

    def tags(self, name: str) -> Deferred[list[str]]:
        """`latest` plus the tags (and commits) of `name` built so far that the policy serves now.

        A repository neither built nor offered by the flake's catalog is NAME_UNKNOWN.
        """
        return ensureDeferred(self._tags(name))

    async def _tags(self, name: str) -> list[str]:
        self.policy.check_name(name)
        target_for(name)
        tags = {tag for tag in self.index.tags(name) if self.policy.allows_tag(tag)}
        if not tags and _bare(name) not in await self._offered():
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
        if self.catalog is None:
            return []
        if self.reactor.seconds() < self._catalog_retry_at:
            return []  # it failed a moment ago: no Nix run per listing until then
        try:
            return await self._flights.run(("-catalog",), lambda: ensureDeferred(self._evaluate_catalog()))
        except Exception as error:
            self._catalog_retry_at = self.reactor.seconds() + MISSING_TTL
            log.warn("the flake's catalog is unavailable, listing only what was built for {ttl} s: {reason}",
                     ttl=MISSING_TTL, reason=failure_reason(error))
            return []

    async def _evaluate_catalog(self) -> list[str]:
        catalog = self.catalog
        assert catalog is not None
        known = self._locks.get("latest")
        now = self.reactor.seconds()
        if known is None or self._catalog_lock_stale or now - known[1] >= self.refresh_interval:
            self._catalog_lock_stale = False
            locked = await self._limited(self._probes, lambda: catalog.lock(self.flake, known is not None))
            self._locks["latest"] = (locked, self.reactor.seconds())
        else:
            locked = known[0]
        names = catalog.cached(locked)
        if names is None:
            log.info("evaluating the flake's catalog at {locked}", locked=locked)
            names = await self._limited(self._probes, lambda: catalog.evaluate(locked))
        return names


def _name_build(error: BaseException, build_id: str) -> None:
    """Put the build's id in a registry error's detail (`detail.build`), so the client knows which log to read."""
    if isinstance(error, ForgeError):
        detail = error.detail if isinstance(error.detail, dict) else {} if error.detail is None else {
            "detail": error.detail}
        error.detail = {**detail, "build": build_id}


def _bare(name: str) -> str:
    """`packages/<pkg>` is `<pkg>`, as the catalog lists it."""
    return name.removeprefix("packages/")


def _already_running() -> None:
    raise AssertionError("only called for a key whose job is running")
