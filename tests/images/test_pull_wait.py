"""The pull wait: a pull waits for a build at most `pull_wait` seconds, then is told to come back; the build goes on."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from nixforge.errors import BuildInProgress
from nixforge.images.service import RETRY_AFTER_BUILD

from .fakes import RecordingObserver, make_forge, result_of


def test_a_pull_waits_pull_wait_seconds_then_is_told_the_build_and_its_log() -> None:
    observer = RecordingObserver()
    forge = make_forge(pull_wait=5.0, observer=observer)
    told: list[str] = []
    pull = forge.service.resolve_tag("hello", "latest", on_build=told.append)
    forge.clock.advance(4.9)
    assert not pull.called
    forge.clock.advance(0.1)
    failure = result_of(pull)
    assert failure.check(BuildInProgress)
    (build,) = told
    assert failure.value.retry_after == RETRY_AFTER_BUILD
    assert failure.value.detail == {"name": "hello", "tag": "latest", "build": build,
                                    "build_log": f"/-/builds/{build}/log"}
    assert f"/-/builds/{build}/log" in failure.value.message and "5 s" in failure.value.message
    # The build goes on without the pull that started it, and its image is the next pull's.
    assert forge.parts.builds.running("hello", "latest") and forge.parts.builds.build_id("hello", "latest") == build
    forge.nix.release()
    assert ("finished", build, "success") in observer.events
    record = forge.service.index.get("hello", "latest")
    assert record is not None
    again = result_of(forge.service.resolve_tag("hello", "latest"))
    assert again.oci.digest == record.oci_digest
    assert len(forge.nix.calls) == 1


def test_every_waiting_pull_has_its_own_wait() -> None:
    forge = make_forge(pull_wait=5.0)
    first = forge.service.resolve_tag("hello", "latest")
    forge.clock.advance(3)
    second = forge.service.resolve_tag("hello", "latest")  # joins the same build
    forge.clock.advance(2)
    assert result_of(first).check(BuildInProgress) and not second.called
    forge.nix.release()
    assert result_of(second).oci.digest == forge.service.index.get("hello", "latest").oci_digest
    assert len(forge.nix.calls) == 1


def test_a_pull_still_being_planned_is_told_so_without_a_build_id() -> None:
    forge = make_forge(pull_wait=5.0)
    forge.nix.catalog_gate = Deferred()  # the catalog evaluation hangs: no build has started
    pull = forge.service.resolve_tag("hello", "latest")
    forge.clock.advance(5)
    failure = result_of(pull)
    assert failure.check(BuildInProgress)
    assert failure.value.detail == {"name": "hello", "tag": "latest"}
    assert "still being planned" in failure.value.message
    forge.nix.catalog_gate.callback(None)
    assert forge.nix.calls == [("hello", "github:o/r", "latest")]  # the planning went on to a build
    forge.nix.release()


def test_a_pull_wait_of_zero_waits_for_the_build() -> None:
    forge = make_forge(pull_wait=0.0)
    pull = forge.service.resolve_tag("hello", "latest")
    forge.clock.advance(3600)
    assert not pull.called
    forge.nix.release()
    assert result_of(pull).oci.digest == forge.service.index.get("hello", "latest").oci_digest


def test_a_stored_image_is_served_at_once_whatever_the_pull_wait() -> None:
    forge = make_forge(pull_wait=5.0)
    forge.service.resolve_tag("hello", "latest")
    forge.nix.release()
    forge.nix.revision = 2
    forge.clock.advance(301)  # stale, and latest moved: served from the store while it is rebuilt
    served = forge.service.resolve_tag("hello", "latest")
    assert served.called and result_of(served).oci.digest
    assert len(forge.nix.pending) == 1
    forge.nix.release()
