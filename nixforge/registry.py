"""The registry's service tree: threads, the store, Nix, the images, the API, and the listener."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread
from twisted.python.threadpool import ThreadPool

from nixforge import __version__
from nixforge.api.app import RegistryApi
from nixforge.api.builds import BuildBook
from nixforge.api.metrics import BuildMetrics, RegistryMetrics
from nixforge.api.nix_cache import NixCacheApi
from nixforge.api.ui import UiPages
from nixforge.api.ui_facts import StoreUsage, UiFacts
from nixforge.config import ForgeConfig
from nixforge.errors import StoreUnavailable
from nixforge.front import refresh_access, serve
from nixforge.images.assembly import ImagesSettings, assemble_images
from nixforge.images.build_events import BuildObservers
from nixforge.images.builder import ImageBuilder
from nixforge.images.flake_locks import FlakeLocks
from nixforge.images.image_script import ScriptRunner
from nixforge.images.nix_cache import NixCache
from nixforge.images.policy import AccessPolicy
from nixforge.images.script_user import ScriptUser
from nixforge.images.served_closures import ServedClosures
from nixforge.images.service import ImageService
from nixforge.images.shared_builds import SharedBuilds
from nixforge.images.snapshotter_images import SnapshotterImages
from nixforge.nix.client import NixClient
from nixforge.nix.gc_roots import GcRoots
from nixforge.nix.signing import CacheKey
from nixforge.oci.manifest_references import ManifestReferences
from nixforge.platforms import host_platform, host_system
from nixforge.readiness import ReadinessCheck, ReadinessService
from nixforge.store.backend import StoreBackend, StoreRefreshService, StoreUnreachable, open_store
from nixforge.store.gc import GC_LEASE_TTL, GarbageCollector
from nixforge.store.gc_journal import GcJournal
from nixforge.store.gc_service import GcScheduler, GcTimerService
from nixforge.store.interfaces import IBlobLocations, IBlobStore, IRecordStore
from nixforge.store.layer_cache import LayerCache
from nixforge.store.narinfo_records import NarRecords
from nixforge.store.pull_times import PullTimes
from nixforge.store.record_leases import RecordLeases
from nixforge.store.s3_client import S3Settings
from nixforge.store.s3_metrics import S3Collector

log = Logger()


class _ThreadPoolService(Service):
    """Own the worker threads that hash, compress and write blobs; stop them at shutdown."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class _BuilderService(Service):
    """Kill every running build (Nix process groups, image scripts) when the registry stops."""

    def __init__(self, builder: ImageBuilder) -> None:
        self.builder = builder

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.builder.stop()


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go programs do); return the soft limit now.

    Each client connection takes a descriptor, and one streaming a blob takes a second.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warn("the open-file limit is {limit}, below the {wanted} that NIXFORGE_MAX_CONNECTIONS needs "
                 "(two per connection, plus room): raise LimitNOFILE= or lower the cap",
                 limit=soft, wanted=wanted)
    return soft


def make_registry(config: ForgeConfig, reactor: Any) -> MultiService:
    """The whole registry as a MultiService: threads, Nix, and the HTTP listener."""
    root = MultiService()
    raise_open_file_limit(2 * config.max_connections + 256)
    os.makedirs(config.data_dir, exist_ok=True)
    pool = ThreadPool(minthreads=0, maxthreads=4, name="nixforge-blobs")
    _ThreadPoolService(pool).setServiceParent(root)

    def run_in_thread(function: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, pool, function, *args)

    backend = _open_store(config, reactor)
    if backend.calls is not None:
        StoreRefreshService(backend, run_in_thread, reactor).setServiceParent(root)
    store, index, records = backend.blobs, backend.index, backend.records
    layer_cache = LayerCache(records)
    shared = RecordLeases(records, ttl=GC_LEASE_TTL) if backend.calls is not None else None
    collector = GarbageCollector(store, index, layer_cache, PullTimes(records), GcJournal(records),
                                 ManifestReferences(), max_size=config.max_store_size, shared=shared)
    gc = GcScheduler(collector, run_in_thread, reactor)
    GcTimerService(gc, config.gc_interval).setServiceParent(root)
    nix = NixClient(reactor=reactor, nix_binary=config.nix_binary, options=config.nix_options,
                    accept_flake_config=config.accept_flake_config, timeout=config.build_timeout)
    scripts = ScriptRunner(ScriptUser.for_this_process(config.script_user))
    gc_roots = GcRoots(os.path.join(config.data_dir, "gcroots"))
    if gc_roots.clear():
        log.info("removed the Nix GC roots a previous run left in {directory}", directory=gc_roots.directory)
    builder = ImageBuilder(nix=nix, store=store, layer_cache=layer_cache,
                           run_in_thread=run_in_thread, clock=reactor, timeout=config.build_timeout,
                           max_layers=config.max_layers, scripts=scripts, gc_roots=gc_roots)
    _BuilderService(builder).setServiceParent(root)
    host = host_system(config.nix_options)
    policy = AccessPolicy(flake=config.flake, revisions=backend.revisions,
                          packages=config.packages, refs=config.refs, commit_tags=config.commit_tags)
    builds = BuildBook(keep=config.builds_kept, max_log_bytes=config.build_log_size)
    shared_builds = _shared_builds(config, backend, run_in_thread, reactor)
    parts = assemble_images(_images_settings(config, host), reactor, nix, builder, store, index, policy, gc,
                            run_in_thread, builds, host_platform(), shared_builds)
    images = parts.service
    if parts.prebuilder is not None:
        # Twice per interval, so a lock is renewed at most half an interval after it went stale.
        TimerService(config.refresh_interval / 2, _lock_latest, parts.locks).setServiceParent(root)
    readiness = ReadinessCheck(config.data_dir, run_in_thread, nix.version, store_probe=backend.probe,
                               store_name=config.store)
    ReadinessService(readiness, config.ready_interval, reactor).setServiceParent(root)
    metrics = RegistryMetrics(images, gc) if config.metrics else None
    if metrics is not None:
        parts.builds.observer = BuildObservers((builds, BuildMetrics(metrics)))
        if backend.calls is not None:
            leases = [("gc", shared)] if shared is not None else []
            if shared_builds is not None:
                leases.append(("build", shared_builds.leases))
            metrics.registry.register(S3Collector(backend.calls, leases))
    served = ServedClosures(index, store, policy, run_in_thread)
    nix_cache = _nix_cache(config, served, nix, store, records, run_in_thread, reactor)
    snapshotter = SnapshotterImages(images, served, store, run_in_thread)
    collector.keep_also = lambda: [*snapshotter.live_blobs(), *(nix_cache.live_blobs() if nix_cache else ())]
    api = RegistryApi(snapshotter, reactor,
                      nix_cache=None if nix_cache is None else NixCacheApi(nix_cache),
                      ui=_ui_pages(config, images, builds, gc, collector, reactor, root),
                      readiness=lambda: readiness.current, builds=builds, metrics=metrics,
                      max_name_length=config.max_name_length,
                      max_tag_length=config.max_tag_length, error_log_tail=config.error_log_tail,
                      refresh_access=refresh_access(config), blob_url=_blob_url(config, backend, readiness),
                      blob_thread=run_in_thread if backend.calls is not None else None)
    serve(config, api.resource(), metrics, run_in_thread, reactor, root)
    log.info("nixforge {version}: flake {flake}, data in {data_dir}, store {store}, store cap {cap}, systems "
             "{systems}", version=__version__, flake=config.flake, data_dir=config.data_dir,
             store=backend.description, systems=",".join(config.systems or (host,)),
             cap="none" if config.max_store_size is None else f"{config.max_store_size} bytes")
    log.info("serving packages {packages}, refs {refs}, commit tags {commit_tags}; image scripts run as "
             "{script_user}", packages=",".join(config.packages), refs=",".join(config.refs),
             commit_tags=config.commit_tags,
             script_user=scripts.user.name if scripts.user is not None else "nixforge's own user")
    return root


def _ui_pages(config: ForgeConfig, images: ImageService, builds: BuildBook, gc: GcScheduler,
              collector: GarbageCollector, reactor: Any, root: MultiService) -> UiPages | None:
    """The web pages (NIXFORGE_UI), reading the store in a one-thread pool of their own, apart from pulls."""
    if not config.ui:
        return None
    pool = ThreadPool(minthreads=0, maxthreads=1, name="nixforge-ui")
    _ThreadPoolService(pool).setServiceParent(root)
    facts = UiFacts(images, builds, lambda function, *args: deferToThreadPool(reactor, pool, function, *args),
                    lambda: StoreUsage(gc.store_bytes, gc.store_blobs, collector.max_size), collector.pulls.get)
    return UiPages(facts)


def _images_settings(config: ForgeConfig, host: str) -> ImagesSettings:
    """The images package's settings from the registry's."""
    return ImagesSettings(flake=config.flake, build_timeout=config.build_timeout,
                          refresh_interval=config.refresh_interval, max_builds=config.max_builds,
                          max_queued_builds=config.max_queued_builds, cache_size=config.cache_size,
                          failure_ttl=config.failure_ttl, pull_wait=config.pull_wait, prebuild=config.prebuild,
                          systems=config.systems, host=host)


def _lock_latest(locks: FlakeLocks) -> None:
    """The prebuild timer: lock latest (again only once its lock is older than the refresh interval)."""

    def failed(reason: Any) -> None:
        log.warn("cannot lock latest for prebuilds: {reason}", reason=reason.getErrorMessage())

    ensureDeferred(locks.lock("latest")).addErrback(failed)


def _nix_cache(config: ForgeConfig, served: ServedClosures, nix: NixClient, store: IBlobStore,
               records: IRecordStore, run_in_thread: Any, reactor: Any) -> NixCache | None:
    """The binary cache of the served closures at /nix-cache/, when NIXFORGE_CACHE_KEY_FILE names a key."""
    if not config.cache_key_file:
        return None
    key = CacheKey.load(config.cache_key_file)
    cache = NixCache(served, nix, store, NarRecords(records), key, run_in_thread, reactor)
    log.info("serving a Nix binary cache of the served closures at /nix-cache/, public key {public}",
             public=key.public())
    return cache


def _open_store(config: ForgeConfig, reactor: Any) -> StoreBackend:
    """The configured store (data dir or bucket), closed at shutdown; exit with one line if unusable."""
    settings = S3Settings(endpoint=config.s3_endpoint, pool=config.s3_pool)
    try:
        backend = open_store(config.store, config.data_dir, reactor.seconds, config.retention, settings,
                             grace=config.gc_grace, on_reactor=isInIOThread)
    except StoreUnreachable as error:
        raise SystemExit(f"nixforge: {error}") from None
    reactor.addSystemEventTrigger("after", "shutdown", backend.close)
    return backend


def _shared_builds(config: ForgeConfig, backend: StoreBackend, run_in_thread: Callable[..., Deferred[Any]],
                   reactor: Any) -> SharedBuilds | None:
    """With a bucket: build leases, so that one replica builds and the others wait for its record."""
    if backend.calls is None:
        return None
    return SharedBuilds(RecordLeases(backend.records, ttl=config.build_lease), backend.index.reload,
                        run_in_thread, reactor)


def _blob_url(config: ForgeConfig, backend: StoreBackend,
              readiness: ReadinessCheck) -> Callable[[str], str | None] | None:
    """Presigned blob URLs for the API's redirects: only from a bucket, and unless NIXFORGE_S3_REDIRECT=false.

    While the last readiness check found the store unreachable, a redirect would only send the
    client to a dead store: answer 503 with Retry-After instead.
    """
    blobs = backend.blobs
    if not config.s3_redirect or not IBlobLocations.providedBy(blobs):
        return None

    def url(digest: str) -> str:
        if any(problem.startswith("store ") for problem in readiness.current.problems):
            raise StoreUnavailable("the object store is unreachable; retry", detail={"store": "s3"})
        return IBlobLocations(blobs).url(digest, config.s3_url_ttl)

    return url
