"""ImageBuilder, after FlakeLocks and Planner: which attribute is built, Nix failures as registry errors, labels."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock

from nixforge.errors import BuildFailed, BuildTimedOut, ManifestUnknown, NameUnknown
from nixforge.images.builder import ImageBuilder
from nixforge.images.flake_locks import FlakeLock, FlakeLocks
from nixforge.images.planner import BuildPlan, Planner, _labels
from nixforge.images.targets import target_for
from nixforge.nix.client import LineSink, NixAttributeMissing, NixError, NixRefUnknown, NixTimeout, StorePathInfo
from nixforge.nix.gc_roots import GcRoots
from nixforge.store.layer_cache import LayerCache
from nixforge.store.memory import MemoryBlobStore
from tests.oci.archive_builders import docker_archive_members, sample_layers, tar_bytes


class FakeNix:
    """Answers like NixClient from canned values; records every installable asked for."""

    def __init__(self, outputs: dict[str, str], probe: dict[str, Any] | None = None,
                 error: Exception | None = None) -> None:
        self.outputs = outputs
        self.probe = probe or {"isDerivation": True, "hasImage": True, "mainProgram": None, "pname": "hello"}
        self.error = error
        self.asked: list[str] = []
        self.timeouts: list[float | None] = []
        self.out_links: list[str | None] = []

    def metadata(self, flake_ref: str, timeout: float | None = None,
                 refresh: bool = False, lines: LineSink = None) -> Deferred[dict[str, object]]:
        self.asked.append(("metadata --refresh " if refresh else "metadata ") + flake_ref)
        return succeed({"url": flake_ref + "?locked=1", "locked": {"rev": "c0ffee"}})

    def eval_json(self, installable: str, apply: str | None = None, timeout: float | None = None,
                  lines: LineSink = None) -> Deferred[object]:
        self.asked.append("eval " + installable)
        self.applied = apply
        return fail(self.error) if self.error else succeed(self.probe)

    def build(self, installable: str, timeout: float | None = None,
              out_link: str | None = None, lines: LineSink = None) -> Deferred[list[str]]:
        self.asked.append("build " + installable)
        if lines is not None:
            lines(f"building {installable}")
        self.timeouts.append(timeout)
        self.out_links.append(out_link)
        if self.error:
            return fail(self.error)
        attribute = installable.split("#", 1)[1]
        output = self.outputs.get(attribute, f"/nix/store/{'a' * 32}-{attribute}")
        if out_link is not None:  # as Nix 2.8 does: <link> for out, <link>-<output> for the others
            os.symlink(output, out_link)
            os.symlink(output, out_link + "-dev")
        return succeed([output])

    def closure(self, path: str, timeout: float | None = None, lines: LineSink = None) -> Deferred[list[Any]]:
        self.asked.append("closure " + path)
        return succeed([StorePathInfo(path, 1, (), "sha256:" + "0" * 64)])


def make_builder(nix: FakeNix, tmp_path: Path, clock: Clock | None = None) -> tuple[ImageBuilder, MemoryBlobStore]:
    store = MemoryBlobStore()
    builder = ImageBuilder(nix=nix, store=store, layer_cache=LayerCache.in_directory(str(tmp_path / "layers")),  # type: ignore[arg-type]
                           run_in_thread=lambda f, *a: maybeDeferred(f, *a), clock=clock or Clock(), timeout=60,
                           max_layers=100, store_dir=str(tmp_path))
    return builder, store


def locks_for(builder: ImageBuilder, flake: str) -> FlakeLocks:
    """Lock `flake` through the builder's Nix and clock, as the registry does (refresh interval 300 s)."""
    return FlakeLocks(builder.nix, builder.clock, flake, 300.0, builder.timeout)


async def plan_for(builder: ImageBuilder, name: str, flake: str, tag: str) -> BuildPlan:
    """Lock `flake` at `tag` and plan `name` for the host alone, as TagBuilds does before a build."""
    lock = await locks_for(builder, flake).lock(tag)
    (plan,) = await Planner(builder.nix, builder.clock, builder.timeout).plan(target_for(name), lock, tag)
    return plan


async def plan_and_build(builder: ImageBuilder, name: str, flake: str, tag: str) -> Any:
    return await builder.build(await plan_for(builder, name, flake, tag))


def run(coroutine: Any) -> Any:
    results: list[Any] = []
    ensureDeferred(coroutine).addBoth(results.append)
    assert results, "did not finish"
    return results[0]


def write_archive(path: Path) -> Path:
    path.write_bytes(tar_bytes(docker_archive_members(sample_layers()), gzip_outer=True))
    return path


def test_a_package_with_an_image_serves_that_image(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "image.tar.gz")
    nix = FakeNix({"hello.image": str(archive)})
    builder, store = make_builder(nix, tmp_path)
    manifests = run(plan_and_build(builder, "hello", "path:/f", "latest"))
    assert nix.asked == ["metadata --refresh path:/f", "eval path:/f?locked=1#hello",
                         "build path:/f?locked=1#hello.image", "build path:/f?locked=1#hello",
                         f"closure /nix/store/{'a' * 32}-hello"]
    assert store.read(manifests.oci.digest) == manifests.oci.body
    assert store.read(manifests.docker.digest) == manifests.docker.body
    annotations = json.loads(manifests.oci.body)["annotations"]
    assert annotations["org.opencontainers.image.source"] == "path:<host path>"
    assert annotations["org.opencontainers.image.revision"] == "c0ffee"


NO_ENTRIES = {"hasContainers": True, "entries": None}


def test_an_application_without_entries_serves_the_named_file_of_its_containers(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    write_archive(tmp_path / "out" / "web.tar.gz")
    nix = FakeNix({"app.containers": str(tmp_path / "out")}, probe=NO_ENTRIES)
    builder, _ = make_builder(nix, tmp_path)
    assert run(plan_and_build(builder, "applications/app/web", "path:/f", "latest")).oci.digest
    assert nix.asked == ["metadata --refresh path:/f", "eval path:/f?locked=1#app",
                         "build path:/f?locked=1#app.containers"]
    missing = run(plan_and_build(builder, "applications/app/db", "path:/f", "latest"))
    assert missing.check(NameUnknown)


def test_an_application_with_entries_builds_only_the_pulled_image(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "web.tar.gz")
    probe = {"hasContainers": True, "entries": ["db.tar.gz", "web.tar.gz"]}
    nix = FakeNix({'my.app.containers.entries."web.tar.gz"': str(archive)}, probe=probe)
    builder, _ = make_builder(nix, tmp_path)
    # The dotted app name is quoted too: its entry is one attribute path, built alone.
    nix.outputs = {'"my.app".containers.entries."web.tar.gz"': str(archive)}
    assert run(plan_and_build(builder, "applications/my.app/web", "path:/f", "latest")).oci.digest
    assert nix.asked == ["metadata --refresh path:/f", 'eval path:/f?locked=1#"my.app"',
                         'build path:/f?locked=1#"my.app".containers.entries."web.tar.gz"']


def test_an_image_the_entries_do_not_list_is_unknown_without_a_build(tmp_path: Path) -> None:
    nix = FakeNix({}, probe={"hasContainers": True, "entries": ["web.tar.gz"]})
    builder, _ = make_builder(nix, tmp_path)
    failure = run(plan_and_build(builder, "applications/app/nope", "path:/f", "latest"))
    assert failure.check(NameUnknown)
    assert failure.value.detail["images"] == ["web.tar.gz"]
    assert not any(asked.startswith("build") for asked in nix.asked)


def test_an_application_without_containers_is_unknown_and_says_so(tmp_path: Path) -> None:
    nix = FakeNix({}, probe={"hasContainers": False, "entries": None})
    builder, _ = make_builder(nix, tmp_path)
    failure = run(plan_and_build(builder, "applications/app/web", "path:/f", "latest"))
    assert failure.check(NameUnknown)
    assert "has no containers" in failure.value.message
    assert not any(asked.startswith("build") for asked in nix.asked)


def test_an_attribute_that_is_not_a_derivation_is_unknown_without_a_build(tmp_path: Path) -> None:
    nix = FakeNix({}, probe={"isDerivation": False, "hasImage": False, "mainProgram": None, "pname": None})
    builder, _ = make_builder(nix, tmp_path)
    failure = run(plan_and_build(builder, "packages/lib", "path:/f", "latest"))
    assert failure.check(NameUnknown)
    assert nix.asked == ["metadata --refresh path:/f", "eval path:/f?locked=1#lib"]


def test_a_dotted_package_name_is_one_quoted_attribute(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "image.tar.gz")
    nix = FakeNix({'"pkgs.hello".image': str(archive)})
    builder, _ = make_builder(nix, tmp_path)
    assert run(plan_and_build(builder, "pkgs.hello", "path:/f", "latest")).oci.digest
    assert nix.asked[1:4] == ['eval path:/f?locked=1#"pkgs.hello"', 'build path:/f?locked=1#"pkgs.hello".image',
                              'build path:/f?locked=1#"pkgs.hello"']


@pytest.mark.parametrize("name, attribute", [("hello", "hello.image"), ("applications/app/web", "app.containers")])
def test_an_output_that_resolves_outside_the_store_is_refused(tmp_path: Path, name: str, attribute: str) -> None:
    outside = tmp_path.parent / f"outside-{tmp_path.name}"
    outside.mkdir()
    write_archive(outside / "web.tar.gz")
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    (store_dir / "out").symlink_to(outside / "web.tar.gz" if name == "hello" else outside)
    nix = FakeNix({attribute: str(store_dir / "out")}, probe=None if name == "hello" else NO_ENTRIES)
    builder, store = make_builder(nix, tmp_path)
    builder.store_dir = str(store_dir)
    failure = run(plan_and_build(builder, name, "path:/f", "latest"))
    assert failure.check(BuildFailed)
    assert "outside the Nix store" in failure.value.message
    assert str(outside) not in json.dumps(failure.value.detail)
    assert store._blobs == {}  # nothing ingested


@pytest.mark.parametrize("error, tag, expected", [
    (NixAttributeMissing("does not provide attribute"), "latest", NameUnknown),
    (NixRefUnknown("Cannot find Git revision"), "v9", ManifestUnknown),
    (NixRefUnknown("cannot fetch"), "latest", BuildFailed),
    (NixTimeout("timed out", timeout=3.0, log_tail=["sleeping"]), "latest", BuildTimedOut),
    (NixError("builder failed", 1, log_tail=["deliberate failure"]), "latest", BuildFailed),
])
def test_nix_failures_become_registry_errors(tmp_path: Path, error: Exception, tag: str, expected: type) -> None:
    builder, _ = make_builder(FakeNix({}, error=error), tmp_path)
    failure = run(plan_and_build(builder, "hello", "github:o/r", tag))
    assert failure.check(expected)
    if expected is BuildFailed and isinstance(error, NixError) and error.log_tail:
        assert failure.value.detail["log"] == error.log_tail
        assert failure.value.detail["error"] == error.message
    if expected is BuildTimedOut:
        assert failure.value.detail["log"] == ["sleeping", "killed after the 60 s build timeout"]


def test_output_that_is_not_an_image_fails_the_build(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    builder, _ = make_builder(FakeNix({"hello.image": str(tmp_path / "notes.txt")}), tmp_path)
    assert run(plan_and_build(builder, "hello", "path:/f", "latest")).check(BuildFailed)


def test_the_planned_lock_is_what_gets_built_and_one_deadline_spans_the_phase(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "image.tar.gz")
    clock = Clock()
    nix = FakeNix({"hello.image": str(archive)})
    builder, _ = make_builder(nix, tmp_path, clock)
    plan = run(plan_for(builder, "hello", "path:/f", "latest"))
    assert (plan.locked, plan.has_image) == ("path:/f?locked=1", True)
    clock.advance(50)  # waiting for a build slot does not count against the build
    run(builder.build(plan))
    assert nix.timeouts == [60, 60]  # the image, then the package it wraps (for its SBOM)


def test_no_time_left_is_a_timeout(tmp_path: Path) -> None:
    # The image's build uses up the deadline: the package it wraps (for the SBOM) has no time left.
    class SlowBuildNix(FakeNix):
        def build(self, installable: str, timeout: float | None = None, out_link: str | None = None,
                  lines: LineSink = None) -> Deferred[list[str]]:
            clock.advance(61)
            return super().build(installable, timeout, out_link, lines)

    clock = Clock()
    archive = write_archive(tmp_path / "image.tar.gz")
    nix = SlowBuildNix({"hello.image": str(archive)})
    builder, _ = make_builder(nix, tmp_path, clock)
    assert run(plan_and_build(builder, "hello", "path:/f", "latest")).check(BuildTimedOut)
    assert [ask for ask in nix.asked if ask.startswith("build")] == ["build path:/f?locked=1#hello.image"]


def test_the_source_label_names_the_flake_without_credentials_query_or_host_path() -> None:
    def lock(flake_ref: str) -> FlakeLock:
        return FlakeLock(flake_ref, flake_ref, None, {}, 0.0)

    labels = _labels(target_for("hello"), lock("git+https://user:token@git.example/o/r?ref=main&access_token=x"))
    assert labels["org.opencontainers.image.source"] == "git+https://<credentials>@git.example/o/r"
    assert _labels(target_for("hello"), lock("github:o/r/v1"))["org.opencontainers.image.source"] == "github:o/r/v1"


def test_each_output_is_held_by_a_gc_root_until_the_image_and_its_record_are_stored(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "image.tar.gz")
    nix = FakeNix({"hello.image": str(archive)})
    builder, store = make_builder(nix, tmp_path)
    builder.gc_roots = roots = GcRoots(str(tmp_path / "gcroots"))
    held_while_recording: list[list[str]] = []

    async def record(manifests: Any) -> None:
        assert store.size(manifests.oci.digest) is not None
        held_while_recording.append(roots.held())

    plan = run(plan_for(builder, "hello", "path:/f", "latest"))
    run(builder.build(plan, record))
    links = nix.out_links  # the image, and the package it wraps (read for the SBOM)
    assert len(links) == 2 and all(link is not None and os.path.dirname(link) == roots.directory for link in links)
    assert held_while_recording == [sorted(name for link in links
                                           for name in (os.path.basename(link), os.path.basename(link) + "-dev"))]
    assert roots.held() == []


@pytest.mark.parametrize("breaks", ["ingest", "record"])
def test_gc_roots_are_dropped_when_the_build_fails_after_nix(tmp_path: Path, breaks: str) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    good = write_archive(tmp_path / "image.tar.gz")
    nix = FakeNix({"hello.image": str(tmp_path / "notes.txt" if breaks == "ingest" else good)})
    builder, _ = make_builder(nix, tmp_path)
    builder.gc_roots = roots = GcRoots(str(tmp_path / "gcroots"))

    async def record(manifests: Any) -> None:
        raise BuildFailed("the index is full")

    plan = run(plan_for(builder, "hello", "path:/f", "latest"))
    assert run(builder.build(plan, record)).check(BuildFailed)
    assert nix.out_links[0] is not None
    assert roots.held() == []


def test_a_re_resolve_asks_nix_to_refresh_the_flake(tmp_path: Path) -> None:
    # A moving tag is always locked with --refresh (so tarball-ttl can't hide a moved branch), once per
    # refresh interval or after expire(): planning twice meanwhile asks Nix once.
    nix = FakeNix({})
    builder, _ = make_builder(nix, tmp_path)
    locks = locks_for(builder, "github:o/r")
    planner = Planner(nix, builder.clock, builder.timeout)
    for _ in range(2):
        run(planner.plan(target_for("hello"), run(locks.lock("main")), "main"))
    locks.expire()
    run(planner.plan(target_for("hello"), run(locks.lock("main")), "main"))
    assert [ask for ask in nix.asked if ask.startswith("metadata")] == [
        "metadata --refresh github:o/r/main", "metadata --refresh github:o/r/main"]
    assert nix.asked.count("eval github:o/r/main?locked=1#hello") == 3


def test_the_build_lines_go_to_the_sink_the_caller_passes(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "image.tar.gz")
    builder, _ = make_builder(FakeNix({"hello.image": str(archive)}), tmp_path)
    plan = run(plan_for(builder, "hello", "path:/f", "latest"))
    lines: list[str] = []
    run(builder.build(plan, lines=lines.append))
    assert lines == ["building path:/f?locked=1#hello.image", "building path:/f?locked=1#hello"]
    run(builder.build(plan))  # no sink: nothing to tell
    assert len(lines) == 2
