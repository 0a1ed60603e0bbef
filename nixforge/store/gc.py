"""Garbage collection of the blob store: the cap, the retention window, mark and sweep, a journal.

GC evicts the least recently pulled images over the cap, forgets superseded digests past the
retention window, and deletes every blob no retained manifest references. Blocking throughout:
run `collect` in a worker thread, one run at a time (gc_service does both).

**What is retained.** Every current tag record, and each tag's superseded manifests for the
retention window (so a digest a client pinned keeps resolving). Mark: those manifests, their
config and layer blobs (and the child manifests of an index). Sweep: every other blob.

**The cap.** When the blobs add up to more than `max_size`, records are evicted least recently
pulled first (never-pulled ones by build time) until what the rest reference fits; the most
recently used image is never evicted, even alone over the cap. An evicted image is rebuilt on its
next pull, as its tag record is gone.

**Concurrency with builds.** A build writes or reuses blobs before its record reaches the index,
so the index alone would let GC delete them. Instead of a lock that would make GC wait for whole
Nix builds, the images service holds a lease (store/leases.py) per build from before its first
blob until its record is indexed, and the store numbers every blob it publishes or finds present.
GC takes the floor (oldest live lease, else "now") when it starts and spares every blob touched at
or after it, checking under the store's lock as it unlinks: a layer-cache hit during the sweep
either sees the blob gone (and writes it again) or protects it. Reads by clients are not blocked.
Leases live in one process. Replicas sharing a bucket (`shared`) add three things: one replica
collects at a time, under a GC lease kept in the record store; it first reads every replica's
records, so it marks from all of them; and the S3 blob store never deletes a blob it first saw
less than NIXFORGE_GC_GRACE ago, which covers blobs other replicas' running builds wrote but have
not recorded yet.

**Readers.** Blobs are unlinked, never truncated: a blob being streamed stays readable to its end.

**Crashes.** A run writes its plan (records to evict, blobs to delete) to a durable journal, then
deletes the plain garbage (first: it frees space without touching the index, and the disk may be
full), removes the records, deletes their blobs, and removes the journal. A run that finds a journal finishes it first
(re-checking each blob against a fresh mark), so after a kill at any moment the index never names a
missing blob, and nothing that is still referenced is deleted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from attrs import frozen
from twisted.logger import Logger

from nixforge.errors import BlobUnknown, StoreFull
from nixforge.store.gc_journal import GcJournal, GcPlan
from nixforge.store.interfaces import ICollectableBlobStore, IReferences, IRetainedIndex, TagRecord
from nixforge.store.layer_cache import LayerCache
from nixforge.store.pull_times import PullTimes
from nixforge.store.record_leases import Lease, RecordLeases

log = Logger()

_MANIFEST_LIMIT = 4 << 20
_RENEW_EVERY = 256  # deletions between renewals of the shared GC lease
GC_LEASE_TTL = 300.0
"""Seconds a GC lease lives without renewal before another replica may take it over."""


@frozen
class GcResult:
    """What one GC run did, for logs and (later) metrics."""

    reason: str
    blobs_deleted: int
    bytes_freed: int
    images_evicted: int
    digests_forgotten: int
    store_bytes: int
    seconds: float
    completed: bool = True
    store_blobs: int = 0


class GarbageCollector:
    """Mark and sweep over one blob store, its tag index and its layer cache.

    `references` tells what a stored manifest names (GC knows no manifest format); `journal`
    lives in the same record store as the index.
    """

    def __init__(
        self,
        store: ICollectableBlobStore,
        index: IRetainedIndex,
        layer_cache: LayerCache,
        pulls: PullTimes,
        journal: GcJournal,
        references: IReferences,
        max_size: int | None = None,
        shared: RecordLeases | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.layer_cache = layer_cache
        self.pulls = pulls
        self.max_size = max_size
        self.journal = journal
        self.references = references
        self.shared = shared
        self._lease: Lease | None = None
        self._lost = False
        self.cancelled = threading.Event()
        self._references: dict[str, frozenset[str]] = {}
        # Blobs no tag record names but something still serves (the Nix cache's NARs, nix/ images);
        # called from the GC thread, so it must answer from a snapshot.
        self.keep_also: Callable[[], Iterable[str]] = lambda: ()

    # -- mark ---------------------------------------------------------------------------------

    def _manifest_references(self, digest: str) -> frozenset[str]:
        """The blobs a manifest (or index) stands for: itself, its config, layers and children."""
        cached = self._references.get(digest)
        if cached is not None:
            return cached
        found = {digest}
        body = self._small_blob(digest)
        if body is not None:
            found |= self.references.blobs(body)
            for child in self.references.children(body):
                found |= self._manifest_references(child)
            self._references[digest] = frozenset(found)  # only cache what was really read
        return frozenset(found)

    def _small_blob(self, digest: str) -> bytes | None:
        """The bytes of a stored blob no bigger than a manifest can be, else None (absent, or a layer)."""
        try:
            with self.store.open(digest) as file:
                body = file.read(_MANIFEST_LIMIT + 1)
        except (BlobUnknown, OSError):
            return None
        return body if len(body) <= _MANIFEST_LIMIT else None

    def _record_references(self, record: TagRecord) -> frozenset[str]:
        """Every blob a record keeps: its manifests (both forms, index members, SBOM artifacts) and
        the tag's retained superseded ones."""
        digests = set(record.digests())
        digests.update(s.digest for s in self.index.superseded(record.name) if s.tag == record.tag)
        found: set[str] = set()
        for digest in digests:
            found |= self._manifest_references(digest)
        return frozenset(found)

    def _mark(self, records: Iterable[TagRecord]) -> set[str]:
        """Every blob referenced by `records` (and by superseded digests of tags no longer current)."""
        marked: set[str] = set()
        for record in records:
            marked |= self._record_references(record)
        return marked

    def _orphan_history(self, records: list[TagRecord]) -> set[str]:
        """Blobs of retained superseded digests whose tag has no current record (still pinnable)."""
        current = {(r.name, r.tag) for r in records}
        marked: set[str] = set()
        for name in {r.name for r in records} | set(self.index.names()):
            for entry in self.index.superseded(name):
                if (name, entry.tag) not in current:
                    marked |= self._manifest_references(entry.digest)
        return marked

    def _last_used(self, record: TagRecord) -> float:
        pulled = self.pulls.get(record.name, record.tag)
        return record.built_at if pulled is None else max(pulled, record.built_at)

    def _choose_evictions(self, records: list[TagRecord], sizes: dict[str, int]) -> list[TagRecord]:
        """Least recently used records to drop so that what the others reference fits the cap."""
        if self.max_size is None or len(records) < 2:
            return []
        references = {id(r): self._record_references(r) for r in records}
        counts: dict[str, int] = {}
        for blobs in references.values():
            for digest in blobs:
                counts[digest] = counts.get(digest, 0) + 1
        extra = self._orphan_history(records)
        for digest in extra:
            counts[digest] = counts.get(digest, 0) + 1
        projected = sum(sizes.get(digest, 0) for digest in counts)
        evicted = []
        for record in sorted(records, key=self._last_used)[:-1]:
            if projected <= self.max_size:
                break
            evicted.append(record)
            for digest in references[id(record)]:
                counts[digest] -= 1
                if counts[digest] == 0:
                    projected -= sizes.get(digest, 0)
        return evicted

    # -- sweep --------------------------------------------------------------------------------

    def _delete(self, candidates: Iterable[str], keep: set[str], floor: int,
                gone: set[str] | None = None) -> tuple[int, int, bool]:
        """Unlink candidates not in `keep` (nor in `gone`, filled with what went) and not protected
        by a lease; return (count, bytes, finished)."""
        deleted, freed = 0, 0
        gone = set() if gone is None else gone
        already = set(gone)
        for number, digest in enumerate(candidates):
            if number % _RENEW_EVERY == _RENEW_EVERY - 1:
                self._renew()
            if self.cancelled.is_set():
                self.layer_cache.forget_blobs(gone - already)
                return deleted, freed, False
            if digest in keep or digest in already:
                continue
            size = self.store.delete(digest, floor)
            if size is not None:
                deleted += 1
                freed += size
                gone.add(digest)
                self._references.pop(digest, None)
        self.layer_cache.forget_blobs(gone - already)
        return deleted, freed, True

    def _finish(self, plan: GcPlan, floor: int) -> tuple[int, int, int, bool]:
        """Carry out a plan: delete its plain garbage, evict its records, then delete their blobs.

        Garbage first, as it frees space without touching the index (the disk may be full). Each
        blob is checked against a fresh mark of the index as it is now, so a plan read back after
        a crash never deletes what a record put since then references.
        """
        records = self.index.records()
        gone: set[str] = set()
        deleted, freed, finished = self._delete(plan.delete, self._keep(records), floor, gone)
        if not finished:
            return 0, deleted, freed, False
        evicted = 0
        for record in plan.evict:
            try:
                removed = self.index.remove(record)
            except (OSError, StoreFull) as error:  # the record stays, and so do its blobs
                log.warn("cannot evict {name}:{tag}: {error}", name=record.name, tag=record.tag, error=error)
                continue
            if removed:
                self.pulls.forget(record.name, record.tag)
                evicted += 1
        more, more_freed, finished = self._delete(plan.delete, self._keep(self.index.records()), floor, gone)
        if finished:
            self.journal.clear()
        return evicted, deleted + more, freed + more_freed, finished

    def _keep(self, records: list[TagRecord]) -> set[str]:
        """The mark: blobs of `records` and of retained superseded digests without a current tag."""
        return self._mark(records) | self._orphan_history(records) | set(self.keep_also())

    def over_cap(self) -> bool:
        """Tell whether the blobs add up to more than the cap (False without one). One scan."""
        return self.max_size is not None and sum(size for _, size in self.store.digests()) > self.max_size

    def store_usage(self) -> tuple[int, int]:
        """The store's bytes and blob count now (one listing of the blob directory)."""
        sizes = [size for _, size in self.store.digests()]
        return sum(sizes), len(sizes)

    def _renew(self) -> None:
        """Keep the shared GC lease alive; stop the run (as if cancelled) if another replica took it."""
        if self.shared is None or self._lease is None:
            return
        self._lease = self.shared.renew(self._lease)
        if self._lease is None:
            self._lost = True
            log.warn("gc: the GC lease was taken over by another replica; stopping this run")
            self.cancelled.set()

    def collect(self, reason: str = "timer", only_over_cap: bool = False) -> GcResult | None:
        """Run once: finish a left-over journal, forget expired digests, evict over the cap, sweep.

        With `only_over_cap`, do nothing (return None) while the store fits its cap. With `shared`
        (replicas on one bucket), only the holder of the GC lease runs, after reading every replica's
        records (its sweep lists every blob); the others return None.
        """
        if self.shared is None:
            return self._collect(reason, only_over_cap)
        self._lease = self.shared.acquire("gc")
        if self._lease is None:
            log.info("gc ({reason}): another replica holds the GC lease; not collecting", reason=reason)
            return None
        try:
            # Mark from every record in the bucket. The blobs need no refresh: the sweep lists them.
            refresh = getattr(self.index, "refresh", None)
            if refresh is not None:
                refresh()
            self._renew()
            return self._collect(reason, only_over_cap)
        finally:
            if self._lease is not None:
                self.shared.release(self._lease)
                self._lease = None
            if self._lost:
                self._lost = False
                self.cancelled.clear()  # a lost lease stopped this run only

    def _collect(self, reason: str, only_over_cap: bool) -> GcResult | None:
        if only_over_cap and not self.over_cap() and self.journal.read() is None:
            log.debug("gc ({reason}): the store is within its cap", reason=reason)
            return None
        started = time.monotonic()
        floor = self.store.leases.floor()
        evicted = deleted = freed = 0
        left_over = self.journal.read()
        if left_over is not None:
            log.info("finishing the GC journal of an interrupted run: {count} blobs, {images} images",
                     count=len(left_over.delete), images=len(left_over.evict))
            evicted, deleted, freed, finished = self._finish(left_over, floor)
            if not finished:
                return self._result(reason, deleted, freed, evicted, 0, started, completed=False)
        try:
            self.pulls.save()
        except (OSError, StoreFull) as error:  # a full disk must not stop the run that frees it
            log.warn("cannot save pull times: {error}", error=error)
        forgotten = len(self.index.forget_expired())
        sizes = dict(self.store.digests())
        records = self.index.records()
        evict = self._choose_evictions(records, sizes)
        kept = [r for r in records if r not in evict]
        keep = self._keep(kept)
        garbage = tuple(sorted(d for d in sizes if d not in keep))
        log.debug("gc marked {kept} blobs, {garbage} candidates, {evict} images to evict",
                  kept=len(keep), garbage=len(garbage), evict=len(evict))
        if garbage or evict:
            plan = GcPlan(tuple(evict), garbage)
            try:
                self.journal.write(plan)
            except (OSError, StoreFull) as error:  # still safe: records go before their blobs, garbage is garbage
                log.warn("cannot write the GC journal ({error}); collecting without it", error=error)
            more_evicted, more_deleted, more_freed, finished = self._finish(plan, floor)
            evicted, deleted, freed = evicted + more_evicted, deleted + more_deleted, freed + more_freed
            if not finished:
                return self._result(reason, deleted, freed, evicted, forgotten, started, completed=False)
        self.store.leases.forget_before(self.store.leases.floor())
        abandoned = self.store.remove_abandoned()
        if abandoned:
            log.info("gc ({reason}): removed {count} abandoned uploads", reason=reason, count=abandoned)
        return self._result(reason, deleted, freed, evicted, forgotten, started)

    def _result(self, reason: str, deleted: int, freed: int, evicted: int, forgotten: int,
                started: float, completed: bool = True) -> GcResult:
        store_bytes, store_blobs = self.store_usage()
        result = GcResult(reason=reason, blobs_deleted=deleted, bytes_freed=freed, images_evicted=evicted,
                          digests_forgotten=forgotten, store_bytes=store_bytes, store_blobs=store_blobs,
                          seconds=time.monotonic() - started, completed=completed)
        log.info("gc ({reason}): deleted {blobs} blobs ({freed} bytes), evicted {images} images, forgot "
                 "{forgotten} digests; store {size} bytes{cap}{state}", reason=reason, blobs=deleted,
                 freed=freed, images=evicted, forgotten=forgotten, size=result.store_bytes,
                 cap="" if self.max_size is None else f" of {self.max_size}",
                 state="" if completed else " (interrupted; the journal finishes it next run)")
        return result
