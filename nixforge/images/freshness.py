"""Freshness: when a stored moving tag is built again: in the background once it is older than the
refresh interval (served from the store meanwhile), or at once after the refresh webhook."""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixforge.images.policy import AccessPolicy
from nixforge.images.tag_builds import TagBuilds
from nixforge.images.targets import BuildTarget, is_immutable, target_for
from nixforge.store.interfaces import ITagIndex, TagRecord

log = Logger()


@define(eq=False)
class Freshness:
    """Decide and start the rebuilds of stored moving tags; `on_refresh` hears of each webhook."""

    clock: IReactorTime
    builds: TagBuilds
    index: ITagIndex
    policy: AccessPolicy
    refresh_interval: float
    on_refresh: Callable[[], None] | None = None
    _queued: set[tuple[str, str]] = field(factory=set, init=False)

    def is_stale(self, record: TagRecord) -> bool:
        """True when a moving tag's record is older than the interval (and its last refresh didn't just fail)."""
        if record.immutable:
            return False
        now = self.clock.seconds()
        failed_at = self.builds.refresh_failed_at.get((record.name, record.tag), float("-inf"))
        return now - record.built_at >= self.refresh_interval and now - failed_at >= self.refresh_interval

    def refresh_in_background(self, target: BuildTarget, tag: str) -> None:
        """Build name:tag again unless a build of it runs already (it is served from the store meanwhile)."""
        if not self.builds.running(target.name, tag):
            self._start(target, tag)

    def refresh_now(self, name: str | None) -> list[str]:
        """Re-resolve every stored moving tag of `name` (of every repository when None) now.

        Every moving tag is locked again on its next use, what is remembered as missing or failed
        for those names is forgotten, and the catalog is asked again. Returns the `name:tag`s
        scheduled, sorted.
        """
        self.builds.forget(name)
        self.builds.locks.expire()
        if self.builds.catalog is not None:
            self.builds.catalog.forget_failures()
        scheduled = []
        for each in [name] if name is not None else self.index.names():
            if not self.policy.allows_name(each):
                continue
            for tag in self.index.tags(each):
                if is_immutable(tag) or not self.policy.allows_tag(tag):
                    continue
                self._again(target_for(each), tag)
                scheduled.append(f"{each}:{tag}")
        if self.on_refresh is not None:
            self.on_refresh()
        return sorted(scheduled)

    def _start(self, target: BuildTarget, tag: str) -> None:
        key = (target.name, tag)
        log.info("refreshing {name}:{tag} in the background", name=target.name, tag=tag)

        def failed(reason: Failure) -> None:
            self.builds.refresh_failed_at[key] = self.clock.seconds()
            log.warn("background refresh of {name}:{tag} failed: {error}",
                     name=target.name, tag=tag, error=reason.getErrorMessage())

        self.builds.run(target, tag).addErrback(failed)

    def _again(self, target: BuildTarget, tag: str) -> None:
        key = (target.name, tag)
        if not self.builds.running(*key):
            self._start(target, tag)
            return
        # The build running now may have locked the revision before the push: run once more after it.
        if key in self._queued:
            return
        self._queued.add(key)

        def after(_: object) -> None:
            self._queued.discard(key)
            self._again(target, tag)

        self.builds.run(target, tag).addBoth(after)
