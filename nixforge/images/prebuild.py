"""Prebuilder: when `latest` moves to a new revision, build the catalog's matching names before anyone pulls.

Told of every lock (a FlakeLocks listener): at start, on its timer, after the refresh webhook, or
when a pull locked the flake. Prebuilds are builds like any other (single flight with pulls, in
`/-/builds` and the metrics), but they take a build slot only when no pull waits for one.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from attrs import define, field
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixforge.errors import ForgeError
from nixforge.images.build_slots import PREBUILD
from nixforge.images.catalog import FlakeCatalog
from nixforge.images.flake_locks import FlakeLock
from nixforge.images.policy import AccessPolicy
from nixforge.images.tag_builds import TagBuilds, failure_reason
from nixforge.images.targets import target_for

log = Logger()
TAG = "latest"


@define(eq=False)
class Prebuilder:
    """Build every catalog name matching `globs` (and served by the policy) at each new revision of latest."""

    globs: tuple[str, ...]
    catalog: FlakeCatalog
    builds: TagBuilds
    policy: AccessPolicy
    started: int = field(default=0, init=False)
    _revision: str | None = field(default=None, init=False)

    def matches(self, name: str) -> bool:
        """Tell whether `name` is one to prebuild."""
        return any(fnmatchcase(name, glob) for glob in self.globs)

    def locked(self, tag: str, lock: FlakeLock) -> None:
        """A FlakeLocks listener: prebuild when `latest` is locked to a revision not prebuilt yet."""
        if tag != TAG or not self.globs or lock.locked == self._revision:
            return
        self._revision = lock.locked
        ensureDeferred(self._prebuild(lock)).addErrback(self._failed)

    def check_now(self) -> None:
        """Lock latest now (it was expired by the webhook): a new revision starts the prebuilds."""
        ensureDeferred(self.builds.locks.lock(TAG)).addErrback(self._failed)

    async def _prebuild(self, lock: FlakeLock) -> None:
        catalog = await self.catalog.at(lock.locked)
        if catalog is None:
            log.warn("no prebuilds at {locked}: the flake's catalog is unavailable", locked=lock.locked)
            if self._revision == lock.locked:
                self._revision = None  # try this revision again on its next lock
            return
        names = [name for name in catalog.names() if self.matches(name) and self.policy.allows_name(name)]
        log.info("prebuilding {count} images at {locked}: {names}", count=len(names), locked=lock.locked,
                 names=", ".join(names[:20]))
        for name in names:
            self.started += 1
            self.builds.run(target_for(name), TAG, kind=PREBUILD).addErrback(self._build_failed, name)

    def _build_failed(self, reason: Failure, name: str) -> None:
        error = reason.value
        text = failure_reason(error) if isinstance(error, ForgeError) else reason.getErrorMessage()
        log.info("prebuild of {name}:latest failed: {reason}", name=name, reason=text)

    def _failed(self, reason: Failure) -> None:
        log.warn("prebuilds not started: {reason}", reason=reason.getErrorMessage())
