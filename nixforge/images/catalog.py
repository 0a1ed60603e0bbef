"""FlakeCatalog: what the flake offers at a locked revision: one `nix eval` per revision, cached.

The names are the attributes under `packages.<system>` (the host's system) that can be pulled as
repositories, plus `applications/<app>/<img>` for each package whose `containers` carries
`entries` (`<img>.tar.gz` → image). One evaluation lists them all; its answer is kept per locked
flake reference, so a revision costs one Nix run however many names are asked of it. A pull of a
name the catalog does not list is NAME_UNKNOWN at once; where the catalog cannot be evaluated,
pulls fall back to asking Nix about the name itself.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nixforge.errors import BuildFailed, NameUnknown
from nixforge.images.single_flight import SingleFlight
from nixforge.images.targets import BuildTarget, is_package_name
from nixforge.nix.commands import installable

log = Logger()

# Applied to `packages.<system>`: for each attribute, the names of its containers' entries, `true`
# for containers without entries (its images are known only once built), or null. tryEval keeps
# one package that throws from hiding every other.
CATALOG_EXPRESSION = (
    "ps: builtins.mapAttrs (name: p: let entries = builtins.tryEval"
    " (if builtins.isAttrs p && p ? containers && builtins.isAttrs p.containers"
    " then (if p.containers ? entries then builtins.attrNames p.containers.entries else true) else null);"
    " in if entries.success then entries.value else null) ps"
)
_IMAGE_SUFFIX = ".tar.gz"
RETRY_AFTER = 30.0
"""Seconds a catalog that failed to evaluate is not asked of Nix again."""


@frozen
class Catalog:
    """The flake's offer at one locked revision: attribute → its containers' entries, True, or None."""

    locked: str
    attributes: dict[str, Any] = field(eq=False, repr=False)

    def names(self) -> list[str]:
        """Repository names, sorted; names no pull could use are left out."""
        names = set()
        for attribute, entries in self.attributes.items():
            names.add(attribute)
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, str) and entry.endswith(_IMAGE_SUFFIX):
                    image = entry[: -len(_IMAGE_SUFFIX)]
                    if is_package_name(image):
                        names.add(f"applications/{attribute}/{image}")
        return sorted(names)

    def check(self, target: BuildTarget) -> None:
        """Raise NameUnknown unless the catalog offers `target` (an application without entries counts)."""
        if target.attribute not in self.attributes:
            raise NameUnknown("the flake has no such package", {"name": target.name})
        if target.kind != "application":
            return
        entries = self.attributes[target.attribute]
        if entries is None:
            raise NameUnknown("the application has no containers (its containers output is missing or disabled)",
                              {"name": target.name, "application": target.attribute})
        if isinstance(entries, list) and target.image_file not in entries:
            raise NameUnknown("the application has no such container image",
                              {"name": target.name, "file": target.image_file,
                               "images": sorted(str(entry) for entry in entries)[:50]})


def catalog_from(locked: str, answer: object) -> Catalog:
    """The Catalog of the evaluation's answer; BuildFailed when it is not one."""
    if not isinstance(answer, dict):
        raise BuildFailed("unexpected answer from the catalog evaluation", {"answer": repr(answer)[:200]})
    attributes = {name: value for name, value in answer.items()
                  if isinstance(name, str) and is_package_name(name)}
    return Catalog(locked, attributes)


@define(eq=False)
class FlakeCatalog:
    """Evaluate the catalog at a locked reference through a NixClient; answers kept per revision.

    A failed evaluation is logged and not tried again for `RETRY_AFTER` seconds: meanwhile the
    catalog is unknown (None), never an error.
    """

    nix: Any
    system: str
    clock: IReactorTime
    timeout: float
    capacity: int = 8
    evaluations: int = field(default=0, init=False)
    _catalogs: OrderedDict[str, Catalog] = field(factory=OrderedDict, init=False)
    _failed: OrderedDict[str, float] = field(factory=OrderedDict, init=False)
    _flights: SingleFlight = field(factory=SingleFlight, init=False)

    def cached(self, locked: str) -> Catalog | None:
        """The catalog evaluated at `locked` before, if it is still kept."""
        catalog = self._catalogs.get(locked)
        if catalog is not None:
            self._catalogs.move_to_end(locked)
        return catalog

    async def at(self, locked: str) -> Catalog | None:
        """The catalog at `locked`: kept, or evaluated now (one `nix eval`); None when it can't be had."""
        catalog = self.cached(locked)
        if catalog is not None:
            return catalog
        if self.clock.seconds() < self._failed.get(locked, float("-inf")):
            return None
        return await self._flights.run(locked, lambda: ensureDeferred(self._evaluate(locked)))

    def forget_failures(self) -> None:
        """Try failed evaluations again on their next use (the refresh webhook)."""
        self._failed.clear()

    async def _evaluate(self, locked: str) -> Catalog | None:
        self.evaluations += 1
        log.info("evaluating the flake's catalog at {locked}", locked=locked)
        try:
            answer = await self.nix.eval_json(installable(locked, "packages", self.system),
                                              apply=CATALOG_EXPRESSION, timeout=self.timeout)
            catalog = catalog_from(locked, answer)
        except Exception as error:
            self._failed[locked] = self.clock.seconds() + RETRY_AFTER
            while len(self._failed) > self.capacity:
                self._failed.popitem(last=False)
            log.warn("the flake's catalog is unavailable at {locked} for {ttl:g} s; names are asked of Nix one "
                     "by one meanwhile: {reason}", locked=locked, ttl=RETRY_AFTER,
                     reason=str(getattr(error, "message", error)).splitlines()[0][:500])
            return None
        self._catalogs[locked] = catalog
        while len(self._catalogs) > self.capacity:
            self._catalogs.popitem(last=False)
        return catalog
