"""ImageService, issue 8: failures remembered, --refresh on re-resolve, the refresh webhook, the catalog."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from nixforge.errors import BuildFailed, BuildTimedOut, NameUnknown, TooManyBuilds
from nixforge.images.catalog import catalog_from
from nixforge.images.interfaces import IImageService
from nixforge.nix.client import NixAttributeMissing

from .fakes import make_service, policy, result_of

BROKEN = BuildFailed("nix build failed", {"error": "builder for 'broken.drv' failed", "log": ["deliberate"]})


def pull_broken(service: Any, builder: Any, name: str = "broken", tag: str = "latest") -> Any:
    pull = service.resolve_tag(name, tag)
    builder.release()
    return result_of(pull)


# -- failures remembered -------------------------------------------------------------------------


def test_three_pulls_of_a_broken_package_are_one_build_with_the_same_error() -> None:
    service, builder, _ = make_service()
    builder.fail_with = BROKEN
    failures = [pull_broken(service, builder) for _ in range(3)]
    assert len(builder.calls) == 1 and len(builder.probes) == 1
    assert all(failure.check(BuildFailed) for failure in failures)
    assert {(f.value.message, repr(f.value.detail)) for f in failures} == {(BROKEN.message, repr(BROKEN.detail))}


def traceback_depth(error: BaseException) -> int:
    depth, frame = 0, error.__traceback__
    while frame is not None:
        depth, frame = depth + 1, frame.tb_next
    return depth


@pytest.mark.parametrize("remembered", ["failure", "missing"])
def test_a_remembered_error_is_raised_as_a_fresh_copy_whose_traceback_does_not_grow(remembered: str) -> None:
    # Raising the kept error itself would add every pull's frames to its traceback (and keep them alive).
    service, builder, _ = make_service()
    if remembered == "failure":
        builder.fail_with = BROKEN
    else:
        builder.probe_fails_with = NixAttributeMissing("flake does not provide attribute 'broken'")
    pull_broken(service, builder)
    again, depths = [], []
    for _ in range(5):
        again.append(pull_broken(service, builder).value)
        depths.append(traceback_depth(again[-1]))  # as each pull gets it
    assert depths == [depths[0]] * 5
    assert len({(type(error), error.message, repr(error.detail)) for error in again}) == 1
    assert len(builder.calls) == (1 if remembered == "failure" else 0) and len(builder.probes) == 1


def test_a_remembered_failure_expires_after_its_ttl() -> None:
    service, builder, clock = make_service(failure_ttl=60.0)
    builder.fail_with = BROKEN
    pull_broken(service, builder)
    clock.advance(59)
    pull_broken(service, builder)
    assert len(builder.calls) == 1
    clock.advance(1)
    pull_broken(service, builder)
    assert len(builder.calls) == 2


def test_a_ttl_of_zero_remembers_nothing() -> None:
    service, builder, _ = make_service(failure_ttl=0.0)
    builder.fail_with = BROKEN
    pull_broken(service, builder)
    pull_broken(service, builder)
    assert len(builder.calls) == 2


def test_timeouts_count_as_failures() -> None:
    service, builder, _ = make_service()
    builder.fail_with = BuildTimedOut("build timed out after 600 seconds", {"log": ["killed"]})
    assert pull_broken(service, builder).check(BuildTimedOut)
    assert pull_broken(service, builder).check(BuildTimedOut)
    assert len(builder.calls) == 1


def test_a_full_queue_is_not_remembered() -> None:
    service, builder, _ = make_service(max_builds=1, max_queued_builds=1)
    service.resolve_tag("a", "latest")
    service.resolve_tag("b", "latest")
    assert result_of(service.resolve_tag("c", "latest")).check(TooManyBuilds)
    builder.release()
    builder.release()
    pull = service.resolve_tag("c", "latest")
    builder.release()
    assert result_of(pull).oci.digest
    assert [call[0] for call in builder.calls] == ["a", "b", "c"]


def test_a_refresh_of_the_name_retries_at_once() -> None:
    service, builder, _ = make_service()
    builder.fail_with = BROKEN
    pull_broken(service, builder)
    assert service.refresh("broken") == []  # nothing stored to re-resolve, but the failure is forgotten
    builder.fail_with = None
    assert pull_broken(service, builder).oci.digest
    assert len(builder.calls) == 2


def test_a_refresh_of_another_name_keeps_the_failure() -> None:
    service, builder, _ = make_service()
    builder.fail_with = BROKEN
    pull_broken(service, builder)
    service.refresh("hello")
    pull_broken(service, builder)
    assert len(builder.calls) == 1


def test_the_tag_seen_at_a_new_revision_retries_at_once() -> None:
    service, builder, clock = make_service(failure_ttl=600.0)
    builder.fail_with = BROKEN
    pull_broken(service, builder)
    builder.revision = 2
    builder.fail_with = None
    clock.advance(301)  # latest's lock is one refresh interval old (the failure is still remembered)
    pull_broken(service, builder, "hello")  # another package's pull locks latest again: revision 2
    assert pull_broken(service, builder).oci.digest
    assert [call[0] for call in builder.calls] == ["broken", "hello", "broken"]


# -- freshness -----------------------------------------------------------------------------------


def test_moving_tags_lock_with_refresh_once_per_interval_and_commit_tags_without() -> None:
    service, builder, clock = make_service(policy=policy(commit_tags="any"))
    pull_broken(service, builder, "hello", "main")
    clock.advance(301)
    result_of(service.resolve_tag("hello", "main"))  # stale: re-resolved in the background
    builder.release()
    pull_broken(service, builder, "tool", "main")  # first pull of tool, but main was locked this interval
    pull_broken(service, builder, "tool", "f" * 40)
    assert builder.refreshed == [True, True, False]
    assert builder.locks == ["--refresh github:o/r/main", "--refresh github:o/r/main", "github:o/r/" + "f" * 40]


def test_the_webhook_refresh_re_resolves_moving_tags_and_a_pull_does_not_wait_for_it() -> None:
    service, builder, _ = make_service(policy=policy(commit_tags="any"))
    for name, tag in (("hello", "latest"), ("hello", "main"), ("hello", "a" * 40), ("tool", "latest")):
        pull_broken(service, builder, name, tag)
    stored = service.index.get("hello", "latest")
    builder.revision = 2
    assert service.refresh("hello") == ["hello:latest", "hello:main"]
    assert len(builder.pending) == 2  # both rebuilds wait on the fake's gate
    served = service.resolve_tag("hello", "latest")
    assert result_of(served).oci.digest == stored.oci_digest  # answered now, from the store
    builder.release()
    assert service.index.get("hello", "latest").oci_digest != stored.oci_digest
    assert builder.refreshed[-2:] == [True, True]
    assert service.refresh(None) == ["hello:latest", "hello:main", "tool:latest"]


def test_a_refresh_during_a_running_build_runs_once_more_after_it() -> None:
    service, builder, _ = make_service()
    pull_broken(service, builder, "hello")
    builder.revision = 2
    service.refresh("hello")  # rebuilds at revision 2
    assert len(builder.calls) == 2
    builder.revision = 3  # pushed while that build runs: the webhook calls twice
    service.refresh("hello")
    service.refresh("hello")
    builder.release()
    assert len(builder.calls) == 3  # one more plan and build, at revision 3: the push is not lost
    assert builder.probes[-1] == "github:o/r?rev=3#hello"
    builder.release()
    assert len(builder.calls) == 3 and len(builder.probes) == 3


def test_a_refresh_of_a_refused_name_is_name_unknown() -> None:
    service, _, _ = make_service(policy=policy(packages=("hello",)))
    try:
        service.refresh("secret")
    except NameUnknown as error:
        assert error.detail["refused_by"] == "NIXFORGE_PACKAGES"
    else:
        raise AssertionError("refused name refreshed")


# -- the catalog ---------------------------------------------------------------------------------


# What the flake offers in these tests: packages, an application with entries, names no pull could use.
PACKAGES: dict[str, Any] = {"hello": None, "tool-a": None, "pkgs.greeter": None,
                            "app1": ["web.tar.gz", "db.tar.gz", "compose.yaml"], "Bad_Name": None}
EVAL_AT = "github:o/r?rev={}#packages.x86_64-linux"


def test_catalog_names_keep_only_pullable_names_and_application_images() -> None:
    assert catalog_from("path:/f", PACKAGES).names() == [
        "app1", "applications/app1/db", "applications/app1/web", "hello", "pkgs.greeter", "tool-a"]
    assert catalog_from("path:/f", {"packages": None, "x": ["../evil.tar.gz", "UP.tar.gz"]}).names() == ["x"]


def test_the_catalog_is_one_eval_per_lock_merged_with_what_was_built() -> None:
    service, builder, clock = make_service(catalog=PACKAGES)
    pull_broken(service, builder, "packages/tool-a")
    listed = result_of(service.repositories())
    assert listed == ["app1", "applications/app1/db", "applications/app1/web", "hello", "packages/tool-a",
                      "pkgs.greeter", "tool-a"]
    assert builder.catalog_evals == [EVAL_AT.format(1)]  # at latest's lock, from the build
    assert builder.locks == ["--refresh github:o/r"]  # the listing used that lock too
    result_of(service.repositories())
    assert len(builder.catalog_evals) == 1
    clock.advance(301)  # the lock is old: locked again (refreshed), same revision → no new eval
    result_of(service.repositories())
    assert builder.locks[1:] == ["--refresh github:o/r"] and len(builder.catalog_evals) == 1
    builder.revision = 2  # a push, then the webhook: latest is locked again, it moved, the catalog is evaluated
    builder.catalog = {"hello": None, "new-tool": None}
    service.refresh(None)
    assert result_of(service.repositories()) == ["hello", "new-tool", "packages/tool-a"]
    assert builder.locks[2:] == ["--refresh github:o/r"]
    assert builder.catalog_evals == [EVAL_AT.format(1), EVAL_AT.format(2)]


def test_the_catalog_is_filtered_by_the_package_policy() -> None:
    service, _, _ = make_service(catalog=PACKAGES, policy=policy(packages=("hello", "applications/app1/web")))
    assert result_of(service.repositories()) == ["applications/app1/web", "hello"]


def test_a_failing_catalog_evaluation_lists_what_was_built() -> None:
    # Without a catalog, a pull asks Nix about its name itself (one probe) and builds.
    service, builder, _ = make_service(catalog=None)
    pull_broken(service, builder, "hello")
    assert builder.probes == ["github:o/r?rev=1#hello"]
    assert result_of(service.repositories()) == ["hello"]
    assert builder.catalog_evals == [EVAL_AT.format(1)]  # not asked again within 30 s


def test_concurrent_listings_share_one_evaluation() -> None:
    service, builder, _ = make_service(catalog=PACKAGES)
    builder.catalog_gate = Deferred()
    listings = [service.repositories() for _ in range(3)]
    builder.catalog_gate.callback(None)
    assert {tuple(result_of(listing)) for listing in listings} == {tuple(catalog_from("x", PACKAGES).names())}
    assert builder.locks == ["--refresh github:o/r"] and builder.catalog_evals == [EVAL_AT.format(1)]


def test_tags_list_is_latest_plus_what_was_served_and_latest_for_a_catalog_name() -> None:
    service, builder, _ = make_service(catalog=PACKAGES)
    pull_broken(service, builder, "hello", "main")
    assert result_of(service.tags("hello")) == ["latest", "main"]
    assert result_of(service.tags("tool-a")) == ["latest"]
    assert result_of(service.tags("packages/tool-a")) == ["latest"]
    assert result_of(service.tags("nosuch")).check(NameUnknown)


def test_the_service_still_provides_the_interface() -> None:
    from zope.interface.verify import verifyObject

    service, _, _ = make_service(catalog=PACKAGES)
    assert verifyObject(IImageService, service)
