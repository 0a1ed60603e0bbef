"""Which Nix store paths the registry serves now, and through which names: the closures of its images.

Derived from what is already durable: every tag record names its SBOM artifacts, and each SBOM lists
its image's closure. Records are read once (in a worker thread) and kept in memory per manifest
digest, so the answer costs a dictionary look-up; a record that left the index drops out at the next
`refresh`. The package and revision policies decide which records count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred

from nixforge.images.policy import AccessPolicy
from nixforge.oci.sbom_closure import STORE_PREFIX, ImageClosure, read_closures
from nixforge.store.interfaces import IBlobStore, ITagIndex, TagRecord


@define(eq=False)
class ServedClosures:
    """Store path → names serving it, from the tag index and the stored SBOMs."""

    index: ITagIndex
    store: IBlobStore
    policy: AccessPolicy
    run_in_thread: Callable[..., Deferred[Any]]
    # record identity (name, tag, oci digest) → the closures of its images
    _closures: dict[tuple[str, str, str], tuple[ImageClosure, ...]] = field(factory=dict, init=False)
    _paths: dict[str, frozenset[str]] = field(factory=dict, init=False)
    _by_subject: dict[str, ImageClosure] = field(factory=dict, init=False)
    _hashes: dict[str, str] = field(factory=dict, init=False)
    _keys: frozenset[tuple[str, str, str]] = field(factory=frozenset, init=False)
    loaded: bool = field(default=False, init=False)  # True once `refresh` has read the index

    def _records(self) -> list[TagRecord]:
        records = []
        for name in self.index.names():
            if not self.policy.allows_name(name):
                continue
            for tag in self.index.tags(name):
                record = self.index.get(name, tag)
                if record is not None and self.policy.allows_tag(tag):
                    records.append(record)
        return records

    async def refresh(self) -> None:
        """Read the SBOMs of records not seen yet; forget records gone or refused now."""
        records = self._records()
        keys = frozenset((record.name, record.tag, record.oci_digest) for record in records)
        if keys == self._keys:
            self.loaded = True
            return
        for record in records:
            key = (record.name, record.tag, record.oci_digest)
            if key not in self._closures:
                self._closures[key] = tuple(await self.run_in_thread(read_closures, self.store, record.manifests))
        for key in set(self._closures) - keys:
            del self._closures[key]
        paths: dict[str, set[str]] = {}
        by_subject = {}
        for (name, _tag, _digest), closures in self._closures.items():
            for closure in closures:
                by_subject[closure.subject] = closure
                for path in closure.paths:
                    paths.setdefault(path, set()).add(name)
        self._paths = {path: frozenset(names) for path, names in paths.items()}
        self._by_subject = by_subject
        self._hashes = {path.removeprefix(STORE_PREFIX)[:32]: path for path in self._paths}
        self._keys = keys
        self.loaded = True

    def names_serving(self, store_path: str) -> frozenset[str]:
        """The repositories whose images need `store_path` (empty: not served), from memory."""
        return self._paths.get(store_path, frozenset())

    def path_of_hash(self, hash_part: str) -> str | None:
        """The served store path whose hash part is `hash_part`, or None."""
        return self._hashes.get(hash_part)

    def closure_of(self, manifest_digest: str) -> ImageClosure | None:
        """The closure behind a served image manifest, or None when nixforge knows none (no SBOM)."""
        return self._by_subject.get(manifest_digest)

