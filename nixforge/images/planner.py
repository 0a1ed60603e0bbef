"""Planner: ask Nix what a target is at a locked revision (one `nix eval`), before anything is built."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define, evolve, field, frozen
from twisted.internet.interfaces import IReactorTime

from nixforge.errors import BuildFailed, NameUnknown
from nixforge.images.flake_locks import FlakeLock
from nixforge.images.nix_errors import for_system, mapped
from nixforge.images.targets import BuildTarget
from nixforge.nix.commands import attribute_path, installable
from nixforge.oci.sbom import PackageFacts
from nixforge.redaction import redact_flake_ref

# Asked of a package before building it (one `nix eval`): is it a derivation at all (`packages` is
# an attrset), does the flake give it an image, and what does it run?
# The same eval reads what the SBOM says of the package itself: version, licenses (SPDX ids), homepage.
PACKAGE_PROBE = (
    'p: { isDerivation = (p.type or null) == "derivation"; hasImage = p ? image;'
    " mainProgram = p.meta.mainProgram or null; pname = p.pname or null; version = p.version or null;"
    " homepage = p.meta.homepage or null;"
    " licenses = let l = p.meta.license or null; ls = if l == null then [] else if builtins.isList l"
    " then l else [l]; in map (x: if builtins.isAttrs x then x.spdxId or null else null) ls; }"
)
# Asked of an application (one `nix eval`): has it containers, and do they list their images
# (nixpkgs' linkFarm carries `entries`), so that one image can be built alone?
APPLICATION_PROBE = (
    "a: { hasContainers = a ? containers;"
    " entries = if a ? containers && a.containers ? entries"
    " then builtins.attrNames a.containers.entries else null; }"
)


@frozen
class BuildPlan:
    """What planning found out: the locked flake and how to make the target's image."""

    target: BuildTarget
    tag: str
    flake_ref: str
    locked: str
    labels: dict[str, str]
    has_image: bool = False
    main_program: str | None = None
    has_entries: bool = False
    revision: str | None = None
    system: str | None = None
    facts: PackageFacts = field(factory=PackageFacts)
    last_modified: int | None = None

    def attribute(self, *more: str) -> tuple[str, ...]:
        """The attribute names of the target (or below it): under `packages.<system>` when one is set."""
        names = (self.target.attribute, *more)
        return names if self.system is None else ("packages", self.system, *names)

    def installable(self, *more: str) -> str:
        """`<locked>#<attribute path>` of the target, or of an attribute below it."""
        return installable(self.locked, *self.attribute(*more))

    def describe(self, *more: str) -> str:
        """The attribute path, for messages."""
        return attribute_path(*self.attribute(*more))


@define(eq=False)
class Planner:
    """Probe targets through a NixClient, within the build timeout."""

    nix: Any
    clock: IReactorTime
    timeout: float

    async def plan(self, target: BuildTarget, lock: FlakeLock, tag: str,
                   systems: Sequence[str | None] = (None,)) -> list[BuildPlan]:
        """Probe the target at `lock` for each system (one `nix eval` each); no build.

        For a system `s` the target is `packages.<s>.<attr>`; for None, `<attr>` as Nix finds it.
        A probe that fails raises the registry's error, naming its system when there is one.
        """
        deadline = self.clock.seconds() + self.timeout
        plans = []
        for system in systems:
            plan = BuildPlan(target, tag, lock.flake_ref, lock.locked, _labels(target, lock),
                             revision=lock.revision, system=system, last_modified=lock.last_modified)
            plans.append(await for_system(system, mapped(lambda plan=plan: self._probe(plan, deadline),
                                                         target.name, lock.flake_ref, tag, self.timeout)))
        return plans

    async def _probe(self, plan: BuildPlan, deadline: float) -> BuildPlan:
        target = plan.target
        if target.kind == "application":
            answer = await self._eval(plan.installable(), APPLICATION_PROBE, deadline)
            return evolve(plan, has_entries=_application_entries(target, answer))
        answer = await self._eval(plan.installable(), PACKAGE_PROBE, deadline)
        if answer.get("isDerivation") is not True:
            raise NameUnknown("the flake has no such package: that attribute is not a derivation",
                              {"name": target.name, "flake": plan.flake_ref})
        main = answer.get("mainProgram")
        return evolve(plan, has_image=bool(answer.get("hasImage")),
                      main_program=main if isinstance(main, str) else None, facts=PackageFacts.from_probe(answer))

    async def _eval(self, what: str, apply: str, deadline: float) -> dict[str, Any]:
        left = deadline - self.clock.seconds()
        answer = await self.nix.eval_json(what, apply=apply, timeout=max(left, 0.001))
        if not isinstance(answer, dict):
            raise BuildFailed("unexpected answer from nix eval", {"answer": repr(answer)[:200]})
        return answer


def _application_entries(target: BuildTarget, answer: dict[str, Any]) -> bool:
    """From the application probe: True if the image can be built alone as an entry, else False.

    Raises NameUnknown when the application has no containers, or its entries don't name the image.
    """
    if answer.get("hasContainers") is not True:
        raise NameUnknown("the application has no containers (its containers output is missing or disabled)",
                          {"name": target.name, "application": target.attribute})
    entries = answer.get("entries")
    if not isinstance(entries, list):
        return False
    if target.image_file not in entries:
        raise NameUnknown("the application has no such container image",
                          {"name": target.name, "file": target.image_file,
                           "images": sorted(str(entry) for entry in entries)[:50]})
    return True


def _labels(target: BuildTarget, lock: FlakeLock) -> dict[str, str]:
    """OCI annotations/labels that say where an image came from (the revision when git-locked)."""
    labels = {
        "org.opencontainers.image.source": redact_flake_ref(lock.flake_ref),
        "org.opencontainers.image.title": target.name,
    }
    if lock.revision is not None:
        labels["org.opencontainers.image.revision"] = lock.revision
    return labels
