"""SystemsBuilder: plan and build a tag for the configured Nix systems: one image, or an index of one per system."""

from __future__ import annotations

from attrs import define, frozen

from nixforge.images.builder import ImageBuilder, Stored
from nixforge.images.flake_locks import FlakeLock
from nixforge.images.planner import BuildPlan, Planner
from nixforge.images.targets import BuildTarget
from nixforge.nix.client import LineSink
from nixforge.oci.documents import ImageManifests
from nixforge.oci.image_index import build_index, platform_for


@frozen
class SystemsPlan:
    """The plans of one target for every configured system, all from one lock of the flake."""

    plans: tuple[BuildPlan, ...]
    host: int

    @property
    def locked(self) -> str:
        """The locked flake reference every member builds from."""
        return self.plans[0].locked

    @property
    def revision(self) -> str | None:
        """The git revision of the lock, if any."""
        return self.plans[0].revision


@define(eq=False)
class SystemsBuilder:
    """Plan and build a tag for the configured systems: one plain image for the host's system alone
    (`<flake>#<attr>`, as Nix finds it), else an image index of `packages.<system>.<attr>` images.
    The flake is locked once for all of them (FlakeLocks), before.

    Members build one after another, each with the build timeout; where each builds is Nix's
    business (remote `builders`, `extra-platforms`). One member failing fails the tag, its error
    naming the system: an index is never stored with a member missing.
    """

    planner: Planner
    builder: ImageBuilder
    systems: tuple[str, ...]
    host: str

    @property
    def single(self) -> bool:
        """True when only the host's own system is configured (no index)."""
        return self.systems == (self.host,)

    async def plan(self, target: BuildTarget, lock: FlakeLock, tag: str) -> BuildPlan | SystemsPlan:
        """Probe the target at `lock` for the host alone, or for each system."""
        if self.single:
            return (await self.planner.plan(target, lock, tag))[0]
        plans = await self.planner.plan(target, lock, tag, self.systems)
        host = self.systems.index(self.host) if self.host in self.systems else 0
        return SystemsPlan(tuple(plans), host)

    async def build(self, plan: BuildPlan | SystemsPlan, stored: Stored | None = None,
                    lines: LineSink = None) -> ImageManifests:
        """Build the plain image, or every member and then their index and manifest list.

        `stored` (the caller's tag record) runs once the whole image is stored: for an index, after
        every member (each held by its GC roots until its own blobs are stored) and the index.
        """
        if isinstance(plan, BuildPlan):
            return await self.builder.build(plan, stored, lines)
        members = []
        for member in plan.plans:
            assert member.system is not None
            members.append((platform_for(member.system), await self.builder.build(member, lines=lines)))
        index = build_index(members, plan.host)
        await self.builder.run_in_thread(self._store, index)
        if stored is not None:
            await stored(index)
        return index

    def _store(self, index: ImageManifests) -> None:
        self.builder.store.put(index.oci.body)
        self.builder.store.put(index.docker.body)
