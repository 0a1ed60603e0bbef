"""FlakeCatalog: what the flake offers, for `_catalog`: one `nix eval` per locked revision, cached.

The names are the attributes under `packages.<system>` (the host's system) that can be pulled as
repositories, plus `applications/<app>/<img>` for each package whose `containers` carries
`entries` (`<img>.tar.gz` → image). One evaluation lists them all; its answer is kept per locked
flake reference, so re-listing a revision already seen costs no Nix run.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from attrs import define, field

from nixforge.errors import BuildFailed
from nixforge.images.targets import is_package_name

# Applied to `packages.<system>`: for each attribute, the names of its containers' entries, or
# null. tryEval keeps one package that throws from hiding every other.
CATALOG_EXPRESSION = (
    "ps: builtins.mapAttrs (name: p: let entries = builtins.tryEval"
    " (if builtins.isAttrs p && p ? containers && builtins.isAttrs p.containers && p.containers ? entries"
    " then builtins.attrNames p.containers.entries else null);"
    " in if entries.success then entries.value else null) ps"
)
_IMAGE_SUFFIX = ".tar.gz"


def catalog_names(answer: object) -> list[str]:
    """Repository names from the catalog evaluation's answer, sorted; names no pull could use are left out."""
    if not isinstance(answer, dict):
        raise BuildFailed("unexpected answer from the catalog evaluation", {"answer": repr(answer)[:200]})
    names = set()
    for attribute, entries in answer.items():
        if not isinstance(attribute, str) or not is_package_name(attribute):
            continue
        names.add(attribute)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, str) and entry.endswith(_IMAGE_SUFFIX):
                image = entry[: -len(_IMAGE_SUFFIX)]
                if is_package_name(image):
                    names.add(f"applications/{attribute}/{image}")
    return sorted(names)


@define(eq=False)
class FlakeCatalog:
    """Lock the flake and list what it offers, through a NixClient; answers cached per locked revision."""

    nix: Any
    system: str
    timeout: float = 600.0
    capacity: int = 8
    _names: OrderedDict[str, list[str]] = field(factory=OrderedDict, init=False)
    evaluations: int = field(default=0, init=False)

    async def lock(self, flake_ref: str, refresh: bool) -> str:
        """The locked reference of `flake_ref` (`nix flake metadata`, with `--refresh` if asked)."""
        metadata = await self.nix.metadata(flake_ref, timeout=self.timeout, refresh=refresh)
        url = metadata.get("url")
        return url if isinstance(url, str) else flake_ref

    def cached(self, locked: str) -> list[str] | None:
        """The names listed for this locked reference before, if they are still kept."""
        names = self._names.get(locked)
        if names is not None:
            self._names.move_to_end(locked)
        return names

    async def evaluate(self, locked: str) -> list[str]:
        """List the flake's repositories at `locked` with one `nix eval`, and keep the answer."""
        self.evaluations += 1
        answer = await self.nix.eval_json(f"{locked}#packages.{self.system}", apply=CATALOG_EXPRESSION,
                                          timeout=self.timeout)
        names = catalog_names(answer)
        self._names[locked] = names
        while len(self._names) > self.capacity:
            self._names.popitem(last=False)
        return names
