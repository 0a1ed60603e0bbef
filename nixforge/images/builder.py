"""Turn a build target and a flake reference into a stored image: Nix builds it, oci/ assembles it.

Two phases, so the image service can run them under different limits:
`plan` locks the flake and asks Nix what the target is (cheap: no build), and `build` builds it and
assembles the image. Each phase has the build timeout as one deadline shared by its commands.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from attrs import define, evolve, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nixforge.errors import BuildFailed, BuildTimedOut, ForgeError, ManifestUnknown, NameUnknown
from nixforge.images.image_script import ScriptRunner
from nixforge.images.targets import BuildTarget, attribute_path
from nixforge.nix.client import NixAttributeMissing, NixClient, NixError, NixRefUnknown, NixTimeout, StorePathInfo
from nixforge.nix.gc_roots import GcRoots
from nixforge.oci.closure_image import PackageMeta, assemble_closure_image
from nixforge.oci.documents import ImageManifests
from nixforge.oci.image_index import config_mismatch, platform_for
from nixforge.oci.ingest import ingest_image
from nixforge.oci.referrers import store_sbom
from nixforge.oci.sbom import PackageFacts, created_at
from nixforge.redaction import redact_flake_ref
from nixforge.store.interfaces import IBlobStore
from nixforge.store.layer_cache import LayerCache

log = Logger()
T = TypeVar("T")
Stored = Callable[[ImageManifests], Awaitable[None]]

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
    """What `plan` found out: the locked flake and how to make the target's image."""

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

    def attribute(self, *more: str) -> str:
        """The attribute path of the target (or below it): under `packages.<system>` when one is set."""
        if self.system is None:
            return self.target.path(*more)
        return attribute_path("packages", self.system, self.target.attribute, *more)


@define(eq=False)
class ImageBuilder:
    """Plan and build images; blocking assembly work goes through `run_in_thread`."""

    nix: NixClient
    store: IBlobStore
    layer_cache: LayerCache
    run_in_thread: Callable[..., Deferred[Any]]
    clock: IReactorTime
    timeout: float = 600.0
    max_layers: int = 100
    scripts: ScriptRunner = field(factory=ScriptRunner)
    store_dir: str = "/nix/store"
    cancel: threading.Event = field(factory=threading.Event)
    gc_roots: GcRoots | None = None

    async def plan(self, target: BuildTarget, flake_ref: str, tag: str, refresh: bool = False) -> BuildPlan:
        """Lock the flake (`nix flake metadata`) and probe `<attr>` as Nix finds it (one `nix eval`).

        `refresh` (a moving tag resolved again) makes Nix fetch the flake again (`--refresh`).
        """
        return (await self.plan_systems(target, flake_ref, tag, (None,), refresh))[0]

    async def plan_systems(
        self, target: BuildTarget, flake_ref: str, tag: str, systems: Sequence[str | None], refresh: bool = False
    ) -> list[BuildPlan]:
        """Lock the flake once, then probe the target for each system (one `nix eval` each); no build.

        For a system `s` the target is `packages.<s>.<attr>`; for None, `<attr>` as Nix finds it.
        A probe that fails raises the registry's error, naming its system when there is one.
        """
        deadline = self.clock.seconds() + self.timeout

        async def probe(system: str | None, metadata: dict[str, object]) -> BuildPlan:
            url = metadata.get("url")
            locked = url if isinstance(url, str) else flake_ref
            labels = _labels(target, flake_ref, metadata)
            last_modified = metadata.get("lastModified")
            plan = BuildPlan(target, tag, flake_ref, locked, labels, revision=locked_revision(metadata),
                             system=system,
                             last_modified=last_modified if isinstance(last_modified, int) else None)
            if target.kind == "application":
                answer = await self._probe(f"{locked}#{plan.attribute()}", APPLICATION_PROBE, deadline)
                return evolve(plan, has_entries=_application_entries(target, answer))
            answer = await self._probe(f"{locked}#{plan.attribute()}", PACKAGE_PROBE, deadline)
            if answer.get("isDerivation") is not True:
                raise NameUnknown("the flake has no such package: that attribute is not a derivation",
                                  {"name": target.name, "flake": flake_ref})
            main = answer.get("mainProgram")
            return evolve(plan, has_image=bool(answer.get("hasImage")),
                          main_program=main if isinstance(main, str) else None, facts=PackageFacts.from_probe(answer))

        async def lock() -> dict[str, object]:
            return await self.nix.metadata(flake_ref, timeout=self._left(deadline), refresh=refresh)

        metadata = await self._mapped(lock, target, flake_ref, tag)
        plans = []
        for system in systems:
            plans.append(await self._for_system(system, self._mapped(
                lambda system=system: probe(system, metadata), target, flake_ref, tag)))
        return plans

    async def _for_system(self, system: str | None, step: Awaitable[T]) -> T:
        """Await `step`; a registry error it raises names `system` (when there is one)."""
        try:
            return await step
        except ForgeError as error:
            if system is None:
                raise
            detail = error.detail if isinstance(error.detail, dict) else {"detail": error.detail}
            named = copy.copy(error)
            named.message = f"{error.message} (system {system})"
            named.detail = {**detail, "system": system}
            named.args = (named.message,)
            raise named from error

    async def _probe(self, installable: str, apply: str, deadline: float) -> dict[str, Any]:
        answer = await self.nix.eval_json(installable, apply=apply, timeout=self._left(deadline))
        if not isinstance(answer, dict):
            raise BuildFailed("unexpected answer from nix eval", {"answer": repr(answer)[:200]})
        return answer

    async def build(self, plan: BuildPlan, stored: Stored | None = None) -> ImageManifests:
        """Build the planned image, store its blobs and both manifests, and return them.

        Every nix command uses the locked reference, so one image comes from one revision even
        while a branch moves. A failure names the plan's system, when it has one. Each output is
        held by a GC root (`gc_roots`) until the image is stored and `stored(manifests)` (the
        caller's tag record) has run; the roots go on failure and timeout too.
        """
        return await self._for_system(plan.system, self._build(plan, stored))

    async def _build(self, plan: BuildPlan, stored: Stored | None) -> ImageManifests:
        deadline = self.clock.seconds() + self.timeout
        target = plan.target
        links: list[str] = []

        def nix_build(path: str) -> Deferred[list[str]]:
            link = self.gc_roots.new_link() if self.gc_roots is not None else None
            if link is not None:
                links.append(link)
            return self.nix.build(f"{plan.locked}#{path}", timeout=self._left(deadline), out_link=link)

        async def run() -> ImageManifests:
            if target.kind == "application" and plan.has_entries:
                assert target.image_file is not None
                entry = plan.attribute("containers", "entries", target.image_file)
                outputs = await nix_build(entry)
                path = self._in_store(outputs[0], target)
                return await self.run_in_thread(self._ingest, path, plan, deadline)
            if target.kind == "application":
                outputs = await nix_build(plan.attribute("containers"))
                path = self._in_store(_application_image(target, outputs[0]), target)
                return await self.run_in_thread(self._ingest, path, plan, deadline)
            if plan.has_image:
                outputs = await nix_build(plan.attribute("image"))
                path = self._in_store(outputs[0], target)
                # The SBOM lists what the image wraps: the package itself, already built as its input.
                package = await nix_build(plan.attribute())
                closure = await self.nix.closure(package[0], timeout=self._left(deadline))
                manifests = await self.run_in_thread(self._ingest, path, plan, deadline)
                return await self.run_in_thread(self._with_sbom, manifests, closure, package[0], plan)
            outputs = await nix_build(plan.attribute())
            self._in_store(outputs[0], target)
            closure = await self.nix.closure(outputs[0], timeout=self._left(deadline))
            meta = PackageMeta(name=target.attribute, out_path=outputs[0],
                               main_program=plan.main_program, labels=plan.labels)
            manifests = await self.run_in_thread(self._assemble, closure, meta, plan)
            return await self.run_in_thread(self._with_sbom, manifests, closure, outputs[0], plan)

        async def run_and_record() -> ImageManifests:
            manifests = await run()
            if stored is not None:
                await stored(manifests)
            return manifests

        try:
            return await self._mapped(run_and_record, target, plan.flake_ref, plan.tag)
        finally:
            if self.gc_roots is not None and links:
                await self.run_in_thread(_release_all, self.gc_roots, links)

    def _in_store(self, path: str, target: BuildTarget) -> str:
        """`path` with its links followed, refused (BuildFailed) unless it ends inside the Nix store."""
        real = os.path.realpath(path)
        store = os.path.realpath(self.store_dir)
        if os.path.commonpath([real, store]) != store or real == store:
            raise BuildFailed("the build output is outside the Nix store; nothing was ingested",
                              {"name": target.name, "output": path})
        return real

    def stop(self) -> Deferred[None]:
        """Kill every running nix command and image script, interrupt assembly (the registry stops)."""
        self.cancel.set()
        self.scripts.kill_all()
        return self.nix.stop()

    def _left(self, deadline: float) -> float:
        left = deadline - self.clock.seconds()
        if left <= 0:
            raise NixTimeout("no time left for the next nix command", self.timeout)
        return left

    async def _mapped(
        self, step: Callable[[], Awaitable[T]], target: BuildTarget, flake_ref: str, tag: str
    ) -> T:
        """Run `step`, turning Nix's failures into the registry's errors."""
        try:
            return await step()
        except NixAttributeMissing as error:
            raise NameUnknown("the flake has no such package", {"name": target.name, "flake": flake_ref}) from error
        except NixRefUnknown as error:
            if tag == "latest":
                raise BuildFailed("cannot fetch the flake", {"flake": flake_ref, "log": error.log_tail}) from error
            raise ManifestUnknown("no such tag in the flake", {"tag": tag, "flake": flake_ref}) from error
        except NixTimeout as error:
            log_tail = [*error.log_tail, f"killed after the {self.timeout:g} s build timeout"]
            raise BuildTimedOut(f"build timed out after {self.timeout:g} seconds", {"log": log_tail}) from error
        except NixError as error:
            raise BuildFailed("nix build failed", {"error": error.message, "log": error.log_tail}) from error

    def _ingest(self, path: str, plan: BuildPlan, deadline: float) -> ImageManifests:
        """Worker thread: ingest a flake-built image and store both manifests.

        A streamLayeredImage output is a script that writes the docker-archive to stdout: it is run
        (argv, no shell, its own process group, killed at the deadline) and ingested as it streams.
        """
        labels = plan.labels
        if self.scripts.is_script(path):
            manifests = self.scripts.ingest_output(self.store, path, labels, deadline - self.clock.seconds())
        else:
            manifests = ingest_image(self.store, path, labels)
        if plan.system is not None:
            mismatch = config_mismatch(self.store, manifests, platform_for(plan.system))
            if mismatch is not None:
                raise BuildFailed(f"the image built for {plan.system} is for another platform: {mismatch}",
                                  {"name": plan.target.name, "system": plan.system})
        return self._stored(manifests)

    def _assemble(self, closure: Any, meta: PackageMeta, plan: BuildPlan) -> ImageManifests:
        """Worker thread: assemble an image from a closure and store both manifests."""
        platform = platform_for(plan.system) if plan.system is not None else None
        try:
            manifests = assemble_closure_image(self.store, self.layer_cache, closure, meta, self.max_layers,
                                               cancel=self.cancel, platform=platform)
        except (ValueError, OSError) as error:
            raise BuildFailed("cannot assemble the image from the closure", {"error": str(error)}) from error
        return self._stored(manifests)

    def _with_sbom(self, manifests: ImageManifests, closure: list[StorePathInfo], out_path: str,
                   plan: BuildPlan) -> ImageManifests:
        """Worker thread: store the closure's SBOM and its artifact manifests (BuildFailed if it can't)."""
        try:
            return store_sbom(self.store, manifests, closure, out_path, plan.facts, plan.target.name,
                              created_at(plan.last_modified))
        except ValueError as error:
            raise BuildFailed("cannot write the image's SBOM", {"error": str(error)}) from error

    def _stored(self, manifests: ImageManifests) -> ImageManifests:
        self.store.put(manifests.oci.body)
        self.store.put(manifests.docker.body)
        return manifests


def _release_all(roots: GcRoots, links: list[str]) -> None:
    """Worker thread: drop the GC roots of one build."""
    for link in links:
        roots.release(link)


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


def _application_image(target: BuildTarget, output: str) -> str:
    """The `<img>.tar.gz` in an application's built containers output, or NameUnknown."""
    assert target.image_file is not None
    path = os.path.join(output, target.image_file)
    if not os.path.lexists(path):
        raise NameUnknown("the application has no such container image",
                          {"name": target.name, "file": target.image_file})
    return path


def _labels(target: BuildTarget, flake_ref: str, metadata: dict[str, object]) -> dict[str, str]:
    """OCI annotations/labels that say where an image came from (the revision when git-locked)."""
    labels = {
        "org.opencontainers.image.source": redact_flake_ref(flake_ref),
        "org.opencontainers.image.title": target.name,
    }
    revision = locked_revision(metadata)
    if revision is not None:
        labels["org.opencontainers.image.revision"] = revision
    return labels


def locked_revision(metadata: dict[str, object]) -> str | None:
    """The git revision `nix flake metadata` locked the flake to (`revision` or `locked.rev`), if any."""
    locked = metadata.get("locked")
    revision = metadata.get("revision") or (locked.get("rev") if isinstance(locked, dict) else None)
    return revision if isinstance(revision, str) else None
