"""AccessPolicy: the package globs, the ref globs and the three commit-tag modes, and what it records."""

from __future__ import annotations

import pytest

from nixforge.errors import ManifestUnknown, NameUnknown
from nixforge.images.policy import AccessPolicy
from nixforge.store.locked_revisions import MemoryLockedRevisions

FLAKE = "github:o/r"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make(**settings: object) -> tuple[AccessPolicy, MemoryLockedRevisions]:
    revisions = MemoryLockedRevisions()
    return AccessPolicy(FLAKE, revisions, **settings), revisions  # type: ignore[arg-type]


def test_the_defaults_serve_every_name_and_ref_but_only_known_commits() -> None:
    policy, revisions = make()
    assert policy.allows_name("applications/app/web") and policy.allows_name("x")
    assert policy.allows_tag("latest") and policy.allows_tag("feature-x")
    assert not policy.allows_tag(COMMIT)
    revisions.record(FLAKE, COMMIT, "feature-x")
    assert policy.allows_tag(COMMIT)


def test_package_globs_span_slashes_and_never_match_by_case() -> None:
    policy, _ = make(packages=("applications/app1/*", "tool-[ab]"))
    assert policy.allows_name("applications/app1/web")
    assert not policy.allows_name("applications/app2/web")
    assert policy.allows_name("tool-a") and policy.allows_name("packages/tool-b")
    assert not policy.allows_name("tool-c")
    with pytest.raises(NameUnknown) as caught:
        policy.check_name("hello")
    assert caught.value.detail == {"name": "hello", "refused_by": "NIXFORGE_PACKAGES"}


def test_a_refused_tag_says_which_setting_refused_it() -> None:
    policy, _ = make(refs=("main",), commit_tags="known")
    with pytest.raises(ManifestUnknown) as caught:
        policy.check_tag("v2")
    assert caught.value.detail["refused_by"] == "NIXFORGE_REFS"
    with pytest.raises(ManifestUnknown) as caught:
        policy.check_tag(COMMIT)
    assert caught.value.detail["refused_by"] == "NIXFORGE_COMMIT_TAGS"
    assert "NIXFORGE_COMMIT_TAGS=known" in caught.value.detail["reason"]


def test_latest_ignores_the_ref_globs() -> None:
    policy, _ = make(refs=("release-*",))
    policy.check_tag("latest")
    assert not policy.allows_tag("main")


@pytest.mark.parametrize("mode, served", [("any", True), ("none", False)])
def test_any_and_none_do_not_look_at_recorded_revisions(mode: str, served: bool) -> None:
    policy, revisions = make(commit_tags=mode)
    assert policy.allows_tag(COMMIT) is served
    revisions.record(FLAKE, COMMIT, "latest")
    assert policy.allows_tag(COMMIT) is served


def test_a_commit_is_known_only_through_a_ref_that_is_still_allowed() -> None:
    policy, revisions = make(refs=("main",))
    revisions.record(FLAKE, COMMIT, "old-branch")
    assert not policy.allows_tag(COMMIT)
    revisions.record(FLAKE, COMMIT, "main")
    assert policy.allows_tag(COMMIT)


def test_only_locks_of_latest_branches_and_git_tags_are_recorded() -> None:
    policy, revisions = make()
    policy.remember_lock("latest", COMMIT)
    policy.remember_lock("v1", COMMIT)
    policy.remember_lock("f" * 40, COMMIT)  # a commit tag vouches for nothing
    policy.remember_lock("main", "not-a-revision")
    assert revisions.refs(FLAKE, COMMIT) == {"latest", "v1"}
    assert revisions.refs(FLAKE, "not-a-revision") == frozenset()


def test_an_unknown_commit_tag_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        make(commit_tags="sometimes")
