"""Put the images package together: locks, catalog, planner, builds and the service, from ImagesSettings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred

from nixforge.images.build_events import IBuildObserver
from nixforge.images.build_slots import BuildSlots
from nixforge.images.builder import ImageBuilder
from nixforge.images.catalog import FlakeCatalog
from nixforge.images.failure_memory import FailureMemory
from nixforge.images.flake_locks import FlakeLock, FlakeLocks
from nixforge.images.freshness import Freshness
from nixforge.images.planner import Planner
from nixforge.images.policy import AccessPolicy
from nixforge.images.prebuild import Prebuilder
from nixforge.images.service import ImageService
from nixforge.images.shared_builds import SharedBuilds
from nixforge.images.stored_images import StoredImages
from nixforge.images.systems import SystemsBuilder
from nixforge.images.tag_builds import TagBuilds
from nixforge.oci.image_index import Platform
from nixforge.store.interfaces import IBlobStore, IStoreKeeper, ITagIndex


@frozen
class ImagesSettings:
    """The settings the images package runs with (from ForgeConfig)."""

    flake: str
    build_timeout: float
    refresh_interval: float
    max_builds: int
    max_queued_builds: int
    cache_size: int
    failure_ttl: float
    pull_wait: float
    prebuild: tuple[str, ...]
    systems: tuple[str, ...]
    host: str


@frozen
class Images:
    """The assembled parts that others hold on to."""

    service: ImageService
    builds: TagBuilds
    locks: FlakeLocks
    prebuilder: Prebuilder | None


def assemble_images(settings: ImagesSettings, reactor: Any, nix: Any, builder: ImageBuilder, store: IBlobStore,
                    index: ITagIndex, policy: AccessPolicy, keeper: IStoreKeeper,
                    run_in_thread: Callable[..., Deferred[Any]], observer: IBuildObserver,
                    host_platform: Platform | None, shared: SharedBuilds | None = None) -> Images:
    """The image service over `nix`, `builder` and the store, with prebuilds when settings ask for them."""
    planner = Planner(nix, reactor, settings.build_timeout)
    systems = SystemsBuilder(planner, builder, settings.systems or (settings.host,), settings.host)

    async def remember_lock(tag: str, lock: FlakeLock) -> None:
        if lock.revision is not None and policy.vouches_for_locks_of(tag):
            await run_in_thread(policy.remember_lock, tag, lock.revision)

    locks = FlakeLocks(nix, reactor, settings.flake, settings.refresh_interval, settings.build_timeout,
                       listeners=[remember_lock])
    catalog = FlakeCatalog(nix, settings.host, reactor, settings.build_timeout)
    stored = StoredImages(store, index, run_in_thread, settings.cache_size, host_platform)
    builds = TagBuilds(clock=reactor, builder=systems, locks=locks, index=index, images=stored,
                       run_in_thread=run_in_thread, slots=BuildSlots(settings.max_builds, settings.max_queued_builds),
                       catalog=catalog, keeper=keeper, observer=observer,
                       failures=FailureMemory(settings.failure_ttl), shared=shared)
    prebuilder = None
    if settings.prebuild:
        prebuilder = Prebuilder(settings.prebuild, catalog, builds, policy)
        locks.listeners.append(prebuilder.locked)
    freshness = Freshness(reactor, builds, index, policy, settings.refresh_interval,
                          on_refresh=prebuilder.check_now if prebuilder is not None else None)
    service = ImageService(reactor=reactor, policy=policy, store=store, index=index, images=stored, builds=builds,
                           freshness=freshness, pull_wait=settings.pull_wait, keeper=keeper)
    return Images(service, builds, locks, prebuilder)
