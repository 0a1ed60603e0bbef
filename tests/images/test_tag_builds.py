"""TagBuilds: build ids, the observer's events and lines, and the build named in its error."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from nixforge.errors import BuildFailed, BuildTimedOut
from nixforge.images.targets import target_for

from .fakes import RecordingObserver, make_forge, result_of, revision_hash


def test_a_build_tells_its_id_and_the_observer_hears_it_start_build_log_and_finish() -> None:
    observer = RecordingObserver()
    forge = make_forge(observer=observer)
    told: list[str] = []
    pull = forge.service.resolve_tag("hello", "latest", on_build=told.append)
    (build,) = told
    assert forge.parts.builds.build_id("hello", "latest") == build
    (start,) = observer.started
    assert (start.id, start.name, start.tag, start.locked, start.revision) == (
        build, "hello", "latest", "github:o/r?rev=1", revision_hash(1))
    forge.nix.release()
    assert result_of(pull).oci.digest
    assert observer.events == [
        ("started", build, "hello", "latest"),
        ("phase", build, "build"),
        ("line", build, "building hello from github:o/r?rev=1"),  # the builder's lines, as they come
        ("finished", build, "success"),
    ]
    assert forge.parts.builds.build_id("hello", "latest") is None


def test_joining_pulls_and_an_unchanged_record_start_no_build() -> None:
    observer = RecordingObserver()
    forge = make_forge(observer=observer)
    told: list[str] = []
    forge.service.resolve_tag("hello", "latest", on_build=told.append)
    forge.service.resolve_tag("hello", "latest", on_build=told.append)  # joins: told nothing
    forge.nix.release()
    assert len(told) == 1
    forge.clock.advance(301)
    refreshed = forge.parts.builds.run(target_for("hello"), "latest", on_build=told.append)
    assert result_of(refreshed).oci.digest  # same revision: the stored image, renewed, no build
    assert len(told) == 1 and len(observer.started) == 1 and len(forge.nix.calls) == 1


def test_a_failed_build_names_its_id_in_the_error_and_to_the_observer() -> None:
    observer = RecordingObserver()
    forge = make_forge(observer=observer)
    forge.nix.fail_with = BuildFailed("nix build failed", {"error": "builder failed", "log": ["x"]})
    told: list[str] = []
    pull = forge.service.resolve_tag("hello", "latest", on_build=told.append)
    forge.nix.release()
    failure = result_of(pull)
    assert failure.check(BuildFailed)
    assert failure.value.detail == {"error": "builder failed", "log": ["x"], "build": told[0]}
    assert observer.events[-1] == ("finished", told[0], "failure")


def test_a_timed_out_build_finishes_as_a_timeout() -> None:
    observer = RecordingObserver()
    forge = make_forge(observer=observer)
    forge.nix.fail_with = BuildTimedOut("build timed out after 600 seconds", {"log": ["killed"]})
    pull = forge.service.resolve_tag("hello", "latest")
    forge.nix.release()
    assert result_of(pull).check(BuildTimedOut)
    assert observer.events[-1][2] == "timeout"


def test_no_build_id_while_planning() -> None:
    forge = make_forge()
    forge.nix.catalog_gate = Deferred()
    told: list[str] = []
    forge.service.resolve_tag("hello", "latest", on_build=told.append)
    assert forge.parts.builds.running("hello", "latest")
    assert forge.parts.builds.build_id("hello", "latest") is None and told == []
    forge.nix.catalog_gate.callback(None)
    assert forge.parts.builds.build_id("hello", "latest") == told[0]
    forge.nix.release()
