"""ImageBuilder: turn a plan into a stored image: Nix builds it, oci/ assembles it, one way per target kind.

The build has the build timeout as one deadline shared by its commands. Planning (what the target
is) happens before, in `nixforge.images.planner`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nixforge.errors import BuildFailed, NameUnknown
from nixforge.images.image_script import ScriptRunner
from nixforge.images.nix_errors import for_system, mapped
from nixforge.images.planner import BuildPlan
from nixforge.images.targets import BuildTarget
from nixforge.nix.client import LineSink, NixClient, NixTimeout, StorePathInfo
from nixforge.nix.gc_roots import GcRoots
from nixforge.oci.closure_image import PackageMeta, assemble_closure_image
from nixforge.oci.documents import ImageManifests
from nixforge.oci.image_index import config_mismatch, platform_for
from nixforge.oci.ingest import ingest_image
from nixforge.oci.referrers import store_sbom
from nixforge.oci.sbom import created_at
from nixforge.store.interfaces import IBlobStore
from nixforge.store.layer_cache import LayerCache

log = Logger()
Stored = Callable[[ImageManifests], Awaitable[None]]


@define(eq=False)
class ImageBuilder:
    """Plan and build images; blocking assembly work goes through `run_in_thread`."""

    nix: NixClient
    store: IBlobStore
    layer_cache: LayerCache
    run_in_thread: Callable[..., Deferred[Any]]
    clock: IReactorTime
    timeout: float
    max_layers: int
    scripts: ScriptRunner = field(factory=ScriptRunner)
    store_dir: str = "/nix/store"
    cancel: threading.Event = field(factory=threading.Event)
    gc_roots: GcRoots | None = None

    async def build(self, plan: BuildPlan, stored: Stored | None = None, lines: LineSink = None) -> ImageManifests:
        """Build the planned image, store its blobs and both manifests, and return them.

        Every nix command uses the locked reference, so one image comes from one revision even
        while a branch moves. A failure names the plan's system, when it has one. Each output is
        held by a GC root (`gc_roots`) until the image is stored and `stored(manifests)` (the
        caller's tag record) has run; the roots go on failure and timeout too.
        """
        return await for_system(plan.system, self._build(plan, stored, lines))

    async def _build(self, plan: BuildPlan, stored: Stored | None, lines: LineSink) -> ImageManifests:
        deadline = self.clock.seconds() + self.timeout
        target = plan.target
        links: list[str] = []

        def nix_build(*more: str) -> Deferred[list[str]]:
            link = self.gc_roots.new_link() if self.gc_roots is not None else None
            if link is not None:
                links.append(link)
            return self.nix.build(plan.installable(*more), timeout=self._left(deadline), out_link=link, lines=lines)

        def closure(path: str) -> Deferred[list[StorePathInfo]]:
            return self.nix.closure(path, timeout=self._left(deadline), lines=lines)

        async def run() -> ImageManifests:
            if target.kind == "application" and plan.has_entries:
                assert target.image_file is not None
                outputs = await nix_build("containers", "entries", target.image_file)
                path = self._in_store(outputs[0], target)
                return await self.run_in_thread(self._ingest, path, plan, deadline)
            if target.kind == "application":
                outputs = await nix_build("containers")
                path = self._in_store(_application_image(target, outputs[0]), target)
                return await self.run_in_thread(self._ingest, path, plan, deadline)
            if plan.has_image:
                outputs = await nix_build("image")
                path = self._in_store(outputs[0], target)
                # The SBOM lists what the image wraps: the package itself, already built as its input.
                package = await nix_build()
                paths = await closure(package[0])
                manifests = await self.run_in_thread(self._ingest, path, plan, deadline)
                return await self.run_in_thread(self._with_sbom, manifests, paths, package[0], plan)
            outputs = await nix_build()
            self._in_store(outputs[0], target)
            paths = await closure(outputs[0])
            meta = PackageMeta(name=target.attribute, out_path=outputs[0],
                               main_program=plan.main_program, labels=plan.labels)
            manifests = await self.run_in_thread(self._assemble, paths, meta, plan)
            return await self.run_in_thread(self._with_sbom, manifests, paths, outputs[0], plan)

        async def run_and_record() -> ImageManifests:
            manifests = await run()
            if stored is not None:
                await stored(manifests)
            return manifests

        try:
            return await mapped(run_and_record, target.name, plan.flake_ref, plan.tag, self.timeout)
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


def _application_image(target: BuildTarget, output: str) -> str:
    """The `<img>.tar.gz` in an application's built containers output, or NameUnknown."""
    assert target.image_file is not None
    path = os.path.join(output, target.image_file)
    if not os.path.lexists(path):
        raise NameUnknown("the application has no such container image",
                          {"name": target.name, "file": target.image_file})
    return path
