"""TagBuilds: make the image of a name:tag at its locked revision, once at a time, and record it.

The steps of one build, in order: what is known to be missing or to have failed is answered from
memory; the flake is locked (FlakeLocks: once per interval for every name); a name the catalog of
that revision does not list is NAME_UNKNOWN with no Nix run; the target is planned (one `nix
eval`); an unchanged record is kept; else the image is built in a build slot and its tag record
written. Observers hear of every build; its log lines reach them as they come.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Protocol

from attrs import define, evolve, field
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nixforge.errors import (
    BuildFailed,
    BuildTimedOut,
    ForgeError,
    ManifestUnknown,
    NameUnknown,
    StoreFull,
    StoreUnavailable,
    TooManyBuilds,
)
from nixforge.images.build_events import BuildStart, IBuildObserver, NoBuildObserver
from nixforge.images.build_slots import PREBUILD, PULL, BuildSlots
from nixforge.images.builder import Stored
from nixforge.images.catalog import FlakeCatalog
from nixforge.images.failure_memory import FailureMemory
from nixforge.images.flake_locks import FlakeLock, FlakeLocks
from nixforge.images.missing_cache import MISSING_TTL, MissingCache
from nixforge.images.planner import BuildPlan
from nixforge.images.shared_builds import SharedBuilds
from nixforge.images.single_flight import SingleFlight
from nixforge.images.stored_images import StoredImages
from nixforge.images.systems import SystemsPlan
from nixforge.images.targets import BuildTarget, is_immutable
from nixforge.nix.client import LineSink
from nixforge.oci.documents import ImageManifests
from nixforge.store.interfaces import IStoreKeeper, ITagIndex, TagRecord

log = Logger()
LOGGED_TAIL_LINES = 15
BuildListener = Callable[[str], None] | None


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
    """What builds need of a builder (nixforge.images.systems.SystemsBuilder)."""

    async def plan(self, target: BuildTarget, lock: FlakeLock, tag: str) -> BuildPlan | SystemsPlan: ...

    async def build(self, plan: BuildPlan | SystemsPlan, stored: Stored | None = None,
                    lines: LineSink = None) -> ImageManifests: ...


@define(eq=False)
class TagBuilds:
    """One build per name:tag at a time; pulls and prebuilds share it (`run`)."""

    clock: IReactorTime
    builder: Builder
    locks: FlakeLocks
    index: ITagIndex
    images: StoredImages
    run_in_thread: Callable[..., Deferred[Any]]
    slots: BuildSlots
    catalog: FlakeCatalog | None = None
    keeper: IStoreKeeper | None = None
    observer: IBuildObserver = field(factory=NoBuildObserver)
    failures: FailureMemory = field(factory=FailureMemory)
    missing: MissingCache = field(factory=MissingCache)
    shared: SharedBuilds | None = None
    _flights: SingleFlight = field(factory=SingleFlight, init=False)
    _probes: DeferredSemaphore = field(init=False)
    _build_ids: dict[tuple[str, str], str] = field(factory=dict, init=False)
    refresh_failed_at: dict[tuple[str, str], float] = field(factory=dict, init=False)
    _kinds: dict[tuple[str, str], str] = field(factory=dict, init=False)  # of the builds in flight
    _slot_waiters: dict[tuple[str, str], Deferred[str]] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._probes = DeferredSemaphore(self.slots.size * 2)

    def run(self, target: BuildTarget, tag: str, kind: str = PULL,
            on_build: BuildListener = None) -> Deferred[ImageManifests]:
        """The image of target:tag, from the build running for it or a new one (told to `on_build`).

        Cancelling the returned Deferred detaches this caller only: the build goes on for the others.
        """
        key = (target.name, tag)
        if kind == PULL and self._flights.running(key):
            self._pulled(key)
        return self._flights.run(key, lambda: ensureDeferred(self._build(target, tag, kind, on_build)))

    def _pulled(self, key: tuple[str, str]) -> None:
        """A pull joins the build of `key`: if it is a prebuild, it gets a pull's place from now on."""
        if self._kinds.get(key) == PREBUILD:
            self._kinds[key] = PULL
            waiter = self._slot_waiters.get(key)
            if waiter is not None:
                self.slots.promote(waiter)

    def running(self, name: str, tag: str) -> bool:
        """Tell whether a build (or its planning) of name:tag is in flight."""
        return self._flights.running((name, tag))

    def build_id(self, name: str, tag: str) -> str | None:
        """The id of the build of name:tag that holds or waits for a slot now, if any (None while planning)."""
        return self._build_ids.get((name, tag))

    def forget(self, name: str | None) -> None:
        """Forget what is remembered as missing or failed for `name` (every name when None)."""
        self.failures.forget(name)
        self.missing.forget(name)

    async def _build(self, target: BuildTarget, tag: str, kind: str, on_build: BuildListener) -> ImageManifests:
        key = (target.name, tag)
        self._kinds[key] = kind
        try:
            return await self._build_steps(target, tag, on_build)
        finally:
            self._kinds.pop(key, None)

    async def _build_steps(self, target: BuildTarget, tag: str, on_build: BuildListener) -> ImageManifests:
        key = (target.name, tag)
        known = self.missing.get(key, self.clock.seconds())
        if known is not None:
            raise known  # a fresh copy each time (MissingCache)
        planning = self.clock.seconds()
        lock = await self.locks.lock(tag)
        failed = self.failures.get(target.name, tag, self.clock.seconds(), lock.locked)
        if failed is not None:
            log.info("{name}:{tag} failed to build at this revision less than {ttl:g} s ago; "
                     "answering that failure again", name=target.name, tag=tag, ttl=self.failures.ttl)
            raise failed  # a fresh copy each time (FailureMemory)
        if self.catalog is not None:
            catalog = await self.catalog.at(lock.locked)
            if catalog is not None:
                catalog.check(target)  # not offered at this revision: NAME_UNKNOWN, no Nix run
        try:
            plan = await self._limited(self._probes, lambda: self.builder.plan(target, lock, tag))
        except (NameUnknown, ManifestUnknown) as error:
            self.missing.remember(key, error, self.clock.seconds() + MISSING_TTL)
            raise
        unchanged = await self._unchanged(target, tag, plan)
        if unchanged is not None:
            return unchanged
        held = None
        if self.shared is not None:  # replicas on one bucket: one build across them
            outcome = await self.shared.hold_or_wait(target.name, tag, plan.locked, unusable=self.index.get(*key))
            if isinstance(outcome, TagRecord):
                return await self.images.load(outcome)
            held = outcome
        build_id = uuid.uuid4().hex[:12]
        if on_build is not None:
            on_build(build_id)
        self._build_ids[key] = build_id
        try:
            return await self._build_planned(target, tag, plan, build_id, planning)
        finally:
            self._build_ids.pop(key, None)
            if held is not None:
                held.release()

    async def _unchanged(self, target: BuildTarget, tag: str, plan: BuildPlan | SystemsPlan) -> ImageManifests | None:
        """The stored image when its record is of the planned revision (its time renewed), else None."""
        record = self.index.get(target.name, tag)
        if record is None or record.source != plan.locked:
            return None
        try:
            manifests = await self.images.load(record)
        except StoreUnavailable:
            raise  # the store did not answer: the image may well be whole
        except ForgeError:
            return None  # stored image incomplete: build it again
        # GC may have evicted the record meanwhile: then its blobs may be gone, build again.
        if not await self.run_in_thread(self.index.replace, record, evolve(record, built_at=self.clock.seconds())):
            return None
        self.refresh_failed_at.pop((target.name, tag), None)
        log.info("{name}:{tag} unchanged at {locked}", name=target.name, tag=tag, locked=plan.locked)
        return manifests

    async def _build_planned(self, target: BuildTarget, tag: str, plan: BuildPlan | SystemsPlan, build_id: str,
                             planning: float) -> ImageManifests:
        started = self.clock.seconds()
        self.observer.build_started(BuildStart(build_id, target.name, tag, plan.locked, plan.revision, started,
                                               started - planning))
        log.info("build started {name}:{tag} from {flake} (build {build})", name=target.name, tag=tag,
                 flake=plan.locked, build=build_id)

        async def record_tag(manifests: ImageManifests) -> None:
            log.debug("storing the tag record of {name}:{tag}", name=target.name, tag=tag)
            await self.run_in_thread(self.index.put, TagRecord(
                name=target.name, tag=tag, oci_digest=manifests.oci.digest, docker_digest=manifests.docker.digest,
                built_at=self.clock.seconds(), source=plan.locked, immutable=is_immutable(tag),
                manifests=tuple(document.digest for document in manifests.related()),
            ))

        def line(text: str) -> None:
            self.observer.build_line(build_id, text)

        async def build() -> ImageManifests:
            key = (target.name, tag)
            waiter = self._slot_waiters[key] = self.slots.acquire(self._kinds.get(key, PULL))
            try:
                held = await waiter
            finally:
                self._slot_waiters.pop(key, None)
            try:
                self.observer.build_phase(build_id, "build", self.clock.seconds())
                return await self.builder.build(plan, record_tag, line)
            finally:
                self.slots.release(held)

        lease = self.keeper.begin_build() if self.keeper is not None else None  # GC spares this build's blobs
        try:
            try:
                manifests = await build()
            except Exception as error:
                _name_build(error, build_id)
                self.observer.build_finished(build_id, "timeout" if isinstance(error, BuildTimedOut) else "failure",
                                             self.clock.seconds(), str(error))
                raise
        except (NameUnknown, ManifestUnknown) as error:
            # e.g. an application whose containers output holds no such image: remember it too.
            self.missing.remember((target.name, tag), error, self.clock.seconds() + MISSING_TTL)
            log.info("build of {name}:{tag} found nothing to serve: {reason}", name=target.name, tag=tag,
                     reason=failure_reason(error))
            raise
        except Exception as error:
            log.info("build failed {name}:{tag}: {reason}", name=target.name, tag=tag, reason=failure_reason(error))
            if isinstance(error, StoreFull) and self.keeper is not None:
                self.keeper.full()
            if isinstance(error, (BuildFailed, BuildTimedOut)):
                self.failures.remember(target.name, tag, plan.locked, error, self.clock.seconds())
            raise
        finally:
            if self.keeper is not None and lease is not None:
                self.keeper.end_build(lease)
        if self.keeper is not None:
            self.keeper.stored()
        self.refresh_failed_at.pop((target.name, tag), None)
        self.images.remember(manifests)
        self.observer.build_finished(build_id, "success", self.clock.seconds(), None)
        log.info("build finished {name}:{tag} in {seconds:.1f}s: {digest}", name=target.name, tag=tag,
                 seconds=self.clock.seconds() - started, digest=manifests.oci.digest)
        return manifests

    async def _limited(self, slots: DeferredSemaphore, step: Callable[[], Any]) -> Any:
        """Run `step` holding one of `slots`; refuse with TooManyBuilds when too many wait."""
        if len(slots.waiting) >= self.slots.max_queued:
            raise TooManyBuilds("too many builds queued; retry later", retry_after=30)
        await slots.acquire()
        try:
            return await step()
        finally:
            slots.release()


def _name_build(error: BaseException, build_id: str) -> None:
    """Put the build's id in a registry error's detail (`detail.build`), so the client knows which log to read."""
    if isinstance(error, ForgeError):
        detail = error.detail if isinstance(error.detail, dict) else {} if error.detail is None else {
            "detail": error.detail}
        error.detail = {**detail, "build": build_id}
