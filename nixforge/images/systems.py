"""Which Nix systems a tag is built for, and the builder that makes one image per system and an index."""

from __future__ import annotations

import platform as host_machine

from attrs import define, frozen

from nixforge.images.builder import BuildPlan, ImageBuilder, Stored
from nixforge.images.targets import BuildTarget
from nixforge.oci.documents import ImageManifests
from nixforge.oci.image_index import SYSTEM, Platform, build_index, platform_for

# platform.machine() → Nix's cpu name, where they differ.
_NIX_CPUS = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "i586": "i686", "ppc64le": "powerpc64le"}


def host_system(nix_options: tuple[tuple[str, str], ...] = ()) -> str:
    """The Nix system of this machine, e.g. x86_64-linux (what `builtins.currentSystem` says).

    A `system` Nix option (`--nix-option system=…`) is what Nix itself then builds for: it wins.
    """
    for name, value in nix_options:
        if name == "system" and value:
            return value
    machine = host_machine.machine().lower()
    return f"{_NIX_CPUS.get(machine, machine)}-{host_machine.system().lower()}"


def parse_systems(text: str) -> tuple[str, ...]:
    """Comma-separated Nix systems, each with an OCI platform, no repeats; empty means the host's."""
    if not text.strip():
        return (host_system(),)
    systems = tuple(item.strip() for item in text.split(","))
    for system in systems:
        if not SYSTEM.fullmatch(system):
            raise ValueError(f"{system!r} is not a Nix system such as x86_64-linux")
        platform_for(system)
    if len(set(systems)) != len(systems):
        raise ValueError("lists a system twice")
    return systems


def host_platform() -> Platform | None:
    """The OCI platform of the host's system, or None when it has no OCI name."""
    try:
        return platform_for(host_system())
    except ValueError:
        return None


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

    Members build one after another, each with the build timeout; where each builds is Nix's
    business (remote `builders`, `extra-platforms`). One member failing fails the tag, its error
    naming the system: an index is never stored with a member missing.
    """

    builder: ImageBuilder
    systems: tuple[str, ...]
    host: str

    @property
    def single(self) -> bool:
        """True when only the host's own system is configured (no index)."""
        return self.systems == (self.host,)

    async def plan(
        self, target: BuildTarget, flake_ref: str, tag: str, refresh: bool = False
    ) -> BuildPlan | SystemsPlan:
        """Lock the flake once (`--refresh` when asked) and probe the target for each system."""
        if self.single:
            return await self.builder.plan(target, flake_ref, tag, refresh)
        plans = await self.builder.plan_systems(target, flake_ref, tag, self.systems, refresh)
        host = self.systems.index(self.host) if self.host in self.systems else 0
        return SystemsPlan(tuple(plans), host)

    async def build(self, plan: BuildPlan | SystemsPlan, stored: Stored | None = None) -> ImageManifests:
        """Build the plain image, or every member and then their index and manifest list.

        `stored` (the caller's tag record) runs once the whole image is stored: for an index, after
        every member (each held by its GC roots until its own blobs are stored) and the index.
        """
        if isinstance(plan, BuildPlan):
            return await self.builder.build(plan, stored)
        members = []
        for member in plan.plans:
            assert member.system is not None
            members.append((platform_for(member.system), await self.builder.build(member)))
        index = build_index(members, plan.host)
        await self.builder.run_in_thread(self._store, index)
        if stored is not None:
            await stored(index)
        return index

    def _store(self, index: ImageManifests) -> None:
        self.builder.store.put(index.oci.body)
        self.builder.store.put(index.docker.body)
