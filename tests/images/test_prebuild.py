"""Prebuilds: a new revision of latest builds the catalog's matching names as prebuilds, once per revision."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from nixforge.images.build_slots import PREBUILD, PULL

from .fakes import Forge, make_forge, policy, result_of

CATALOG = {"hello": None, "tool-a": None, "tool-b": None, "other": None, "app1": ["web.tar.gz"]}


def prebuilding(**settings: Any) -> tuple[Forge, list[str]]:
    """A forge that prebuilds `prebuild`, and the kind of every build slot asked for, in order."""
    forge = make_forge(catalog=CATALOG, **settings)
    kinds: list[str] = []
    slots = forge.parts.builds.slots
    acquire = slots.acquire

    def recorded(kind: str = PULL) -> Deferred[None]:
        kinds.append(kind)
        return acquire(kind)

    slots.acquire = recorded  # type: ignore[method-assign]
    return forge, kinds


def lock_latest(forge: Forge) -> None:
    result_of(ensureDeferred(forge.parts.locks.lock("latest")))


def test_a_new_revision_of_latest_prebuilds_the_matching_catalog_names() -> None:
    forge, kinds = prebuilding(prebuild=("tool-*", "applications/*"), max_builds=4)
    assert forge.parts.prebuilder is not None
    lock_latest(forge)
    assert sorted(call[0] for call in forge.nix.calls) == ["applications/app1/web", "tool-a", "tool-b"]
    assert all(tag == "latest" for _, _, tag in forge.nix.calls)
    assert kinds == [PREBUILD] * 3
    assert forge.parts.prebuilder.started == 3
    forge.nix.release()
    assert forge.service.index.get("tool-a", "latest") is not None
    served = forge.service.resolve_tag("tool-a", "latest")  # prebuilt: served at once
    assert served.called and result_of(served).oci.digest


def test_the_same_revision_twice_starts_nothing() -> None:
    forge, kinds = prebuilding(prebuild=("tool-*",), max_builds=4)
    lock_latest(forge)
    forge.nix.release()
    forge.clock.advance(301)  # latest locked again (the prebuild timer), at the same revision
    lock_latest(forge)
    assert forge.nix.locks == ["--refresh github:o/r"] * 2
    assert kinds == [PREBUILD] * 2 and len(forge.nix.calls) == 2
    assert forge.parts.prebuilder is not None and forge.parts.prebuilder.started == 2
    forge.nix.revision = 2
    forge.clock.advance(301)
    lock_latest(forge)  # a new revision: prebuilt again
    assert kinds == [PREBUILD] * 4 and len(forge.nix.calls) == 4
    forge.nix.release()


def test_a_pull_that_locks_a_new_revision_starts_the_prebuilds_too() -> None:
    forge, kinds = prebuilding(prebuild=("tool-*",), max_builds=4)
    pull = forge.service.resolve_tag("hello", "latest")
    assert sorted(call[0] for call in forge.nix.calls) == ["hello", "tool-a", "tool-b"]
    assert kinds.count(PULL) == 1 and kinds.count(PREBUILD) == 2
    forge.nix.release()
    assert result_of(pull).oci.digest


def test_only_latest_and_names_the_policy_serves_are_prebuilt() -> None:
    forge, _ = prebuilding(prebuild=("tool-*",), policy=policy(packages=("hello", "tool-a")))
    result_of(ensureDeferred(forge.parts.locks.lock("main")))
    assert forge.nix.calls == []
    lock_latest(forge)
    assert [call[0] for call in forge.nix.calls] == ["tool-a"]
    forge.nix.release()


def test_no_prebuild_setting_means_no_prebuilder() -> None:
    forge, kinds = prebuilding()
    assert forge.parts.prebuilder is None
    lock_latest(forge)
    assert forge.nix.calls == [] and kinds == []


def test_the_refresh_webhook_locks_latest_and_prebuilds_a_new_revision() -> None:
    forge, kinds = prebuilding(prebuild=("tool-a",))
    lock_latest(forge)
    forge.nix.release()
    forge.nix.revision = 2
    assert forge.service.refresh(None) == ["tool-a:latest"]
    assert forge.nix.locks == ["--refresh github:o/r"] * 2  # the refresh and the prebuilder share one lock
    assert kinds == [PREBUILD, PULL]  # the refresh of the stored tag runs first and is the build at rev 2
    assert len(forge.nix.calls) == 2
    forge.nix.release()


def test_prebuilds_leave_a_slot_for_pulls() -> None:
    forge, _ = prebuilding(prebuild=("tool-*", "other"), max_builds=2)
    lock_latest(forge)
    assert len(forge.nix.calls) == 1  # one of two slots: the other is kept for a pull
    pull = forge.service.resolve_tag("hello", "latest")
    assert len(forge.nix.calls) == 2 and forge.nix.calls[-1][0] == "hello"
    forge.nix.release()
    assert result_of(pull).oci.digest
    forge.nix.release()
    forge.nix.release()
    assert len(forge.nix.calls) == 4


def test_a_pull_of_a_name_waiting_as_a_prebuild_takes_a_free_slot_at_once() -> None:
    # `other` runs as a prebuild (one of two slots); tool-a and tool-b wait as prebuilds. A pull of
    # tool-b joins its build: it must not wait behind the prebuilds while a slot is free.
    forge, kinds = prebuilding(prebuild=("tool-*", "other"), max_builds=2)
    lock_latest(forge)
    assert [call[0] for call in forge.nix.calls] == ["other"]
    pull = forge.service.resolve_tag("tool-b", "latest")
    assert [call[0] for call in forge.nix.calls] == ["other", "tool-b"]
    assert forge.parts.builds.slots.running == 2 and forge.parts.builds.slots.queued == 1
    forge.nix.release()  # other and tool-b finish; tool-a, still a prebuild, takes one of the free slots
    assert result_of(pull).oci.digest
    assert [call[0] for call in forge.nix.calls] == ["other", "tool-b", "tool-a"]
    forge.nix.release()
    assert (forge.parts.builds.slots.running, forge.parts.builds.slots.queued) == (0, 0)
    assert kinds == [PREBUILD] * 3


def test_a_revision_whose_catalog_was_unavailable_is_prebuilt_on_its_next_lock() -> None:
    forge, kinds = prebuilding(prebuild=("tool-*",), max_builds=4)
    forge.nix.catalog = None  # the evaluation fails at start (say, the network is down)
    lock_latest(forge)
    assert forge.nix.calls == [] and len(forge.nix.catalog_evals) == 1
    forge.nix.catalog = dict(CATALOG)
    forge.clock.advance(301)  # the prebuild timer locks latest again: the same revision
    lock_latest(forge)
    assert sorted(call[0] for call in forge.nix.calls) == ["tool-a", "tool-b"]
    assert kinds == [PREBUILD] * 2
    forge.nix.release()
