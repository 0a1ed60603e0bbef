"""Fakes for the images unit tests: Nix and the builder in memory, the service assembled as tap.py does."""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from zope.interface import implementer

from nixforge.images.assembly import Images, ImagesSettings, assemble_images
from nixforge.images.build_events import BuildStart, IBuildObserver, NoBuildObserver
from nixforge.images.catalog import CATALOG_EXPRESSION
from nixforge.images.planner import APPLICATION_PROBE, BuildPlan
from nixforge.images.policy import AccessPolicy
from nixforge.images.service import ImageService
from nixforge.nix.client import LineSink, NixError
from nixforge.oci.documents import ImageManifests, build_manifests
from nixforge.oci.image_index import platform_for
from nixforge.oci.layer_writer import LayerWriter
from nixforge.store.interfaces import IBlobStore, IStoreKeeper, ITagIndex
from nixforge.store.locked_revisions import MemoryLockedRevisions
from nixforge.store.memory import MemoryBlobStore, NoStoreKeeper
from nixforge.store.tag_index import MemoryTagIndex

FLAKE = "github:o/r"
HOST = "x86_64-linux"
# What the fake flake offers under packages.<HOST>: packages (None: no containers) and one
# application whose containers carry no `entries` (True).
CATALOG: dict[str, Any] = {name: None for name in ("a", "b", "c", "hello", "secret", "tool", "tool-a", "broken")}
CATALOG["app"] = True
HOST_PLATFORM = platform_for(HOST)


def revision_hash(revision: int) -> str:
    """The 40-hex git revision the fake locks to for its revision number."""
    return f"{revision:040x}"


def result_of(deferred: Deferred[Any]) -> Any:
    """The result (or Failure) a Deferred already fired with."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


class FakeNix:
    """Nix and the image builder in one: locks, probes and the catalog answer at once (each recorded);
    each build waits until the test calls `release()`.

    `revision` is what the flake is locked to now; `catalog` is what the catalog evaluation answers
    (None: it fails). Set `lock_fails_with`, `probe_fails_with` or `fail_with` to make the lock, the
    probe or the build fail.
    """

    def __init__(self, store: IBlobStore) -> None:
        self.store = store
        self.revision = 1
        self.catalog: dict[str, Any] | None = dict(CATALOG)
        self.locks: list[str] = []  # flake refs locked, `--refresh ` first when refreshed
        self.refreshed: list[bool] = []
        self.probes: list[str] = []  # installables probed
        self.catalog_evals: list[str] = []  # installables of catalog evaluations
        self.catalog_gate: Deferred[None] | None = None  # when set, catalog evaluations wait for it
        self.calls: list[tuple[str, str, str]] = []  # builds: (name, flake ref, tag)
        self.built: list[BuildPlan] = []
        self.pending: list[Deferred[None]] = []
        self.lock_fails_with: Exception | None = None
        self.probe_fails_with: Exception | None = None
        self.fail_with: Exception | None = None

    # -- what FlakeLocks, FlakeCatalog and Planner ask of a NixClient ----------------------------

    async def metadata(self, flake_ref: str, timeout: float | None = None, refresh: bool = False,
                       lines: LineSink = None) -> dict[str, Any]:
        self.locks.append(("--refresh " if refresh else "") + flake_ref)
        self.refreshed.append(refresh)
        if self.lock_fails_with is not None:
            raise self.lock_fails_with
        return {"url": f"{flake_ref}?rev={self.revision}", "revision": revision_hash(self.revision)}

    async def eval_json(self, installable: str, apply: str | None = None, timeout: float | None = None,
                        lines: LineSink = None) -> Any:
        if apply == CATALOG_EXPRESSION:
            self.catalog_evals.append(installable)
            if self.catalog_gate is not None:
                await self.catalog_gate
            if self.catalog is None:
                raise NixError("error: flake 'github:o/r' does not provide attribute 'packages'", 1, [])
            return dict(self.catalog)
        self.probes.append(installable)
        if self.probe_fails_with is not None:
            raise self.probe_fails_with
        if apply == APPLICATION_PROBE:
            return {"hasContainers": True, "entries": None}
        return {"isDerivation": True, "hasImage": False, "mainProgram": None}

    # -- what SystemsBuilder asks of an ImageBuilder --------------------------------------------

    async def build(self, plan: BuildPlan, stored: Any = None, lines: LineSink = None) -> ImageManifests:
        self.calls.append((plan.target.name, plan.flake_ref, plan.tag))
        self.built.append(plan)
        gate: Deferred[None] = Deferred()
        self.pending.append(gate)
        if lines is not None:
            lines(f"building {plan.target.name} from {plan.locked}")
        await gate
        if self.fail_with is not None:
            raise self.fail_with
        writer = LayerWriter(self.store)
        writer.write(f"{plan.locked}:{plan.target.name}:{len(self.calls)}".encode())
        layer = writer.close()
        config_digest, config_size = self.store.put(b'{"rootfs":{}}')
        manifests = build_manifests(config_digest, config_size, [layer])
        self.store.put(manifests.oci.body)
        self.store.put(manifests.docker.body)
        if stored is not None:
            await stored(manifests)
        return manifests

    def release(self) -> None:
        """Let every build waiting now go on."""
        while self.pending:
            self.pending.pop(0).callback(None)


@implementer(IBuildObserver)
class RecordingObserver:
    """Remember every build event, in order."""

    def __init__(self) -> None:
        self.started: list[BuildStart] = []
        self.events: list[tuple[Any, ...]] = []

    def build_started(self, start: BuildStart) -> None:
        self.started.append(start)
        self.events.append(("started", start.id, start.name, start.tag))

    def build_phase(self, build_id: str, phase: str, at: float) -> None:
        self.events.append(("phase", build_id, phase))

    def build_line(self, build_id: str, line: str) -> None:
        self.events.append(("line", build_id, line))

    def build_finished(self, build_id: str, outcome: str, finished: float, error: str | None) -> None:
        self.events.append(("finished", build_id, outcome))


def policy(**settings: Any) -> AccessPolicy:
    """The access policy of the fake flake, with some settings."""
    return AccessPolicy(flake=FLAKE, revisions=MemoryLockedRevisions(), **settings)


@define
class Forge:
    """An image service put together by `assemble_images`, and the fakes and clock under it."""

    service: ImageService
    nix: FakeNix
    clock: Clock
    parts: Images
    observer: Any = field(default=None)


def make_forge(nix: FakeNix | None = None, *, policy: AccessPolicy | None = None, index: ITagIndex | None = None,
               keeper: IStoreKeeper | None = None, run_in_thread: Any = None, observer: Any = None,
               host_platform: Any = HOST_PLATFORM, catalog: Any = CATALOG, **settings: Any) -> Forge:
    """Assemble the images package as tap.py does, over a FakeNix (for both Nix and the builder).

    `catalog` is what the flake offers (None: its evaluation fails); `settings` override
    ImagesSettings; pulls wait for their build unless `pull_wait` is set.
    """
    clock = Clock()
    nix = nix if nix is not None else FakeNix(MemoryBlobStore())
    nix.catalog = dict(catalog) if catalog is not None else None
    values: dict[str, Any] = {
        "flake": FLAKE, "build_timeout": 600.0, "refresh_interval": 300.0, "max_builds": 2, "max_queued_builds": 2,
        "cache_size": 4, "failure_ttl": 60.0, "pull_wait": 0.0, "prebuild": (), "systems": (HOST,), "host": HOST,
    }
    values.update(settings)
    parts = assemble_images(
        ImagesSettings(**values), clock, nix, nix, nix.store,  # type: ignore[arg-type]
        index if index is not None else MemoryTagIndex(),
        policy if policy is not None else AccessPolicy(flake=FLAKE, revisions=MemoryLockedRevisions()),
        keeper if keeper is not None else NoStoreKeeper(),
        run_in_thread if run_in_thread is not None else (lambda f, *a: maybeDeferred(f, *a)),
        observer if observer is not None else NoBuildObserver(), host_platform)
    return Forge(parts.service, nix, clock, parts, observer)


def make_service(**overrides: Any) -> tuple[ImageService, FakeNix, Clock]:
    """The service, the fake under it (Nix and builder) and the clock; see `make_forge`."""
    forge = make_forge(**overrides)
    return forge.service, forge.nix, forge.clock
