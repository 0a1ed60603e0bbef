"""The access policy against a real twistd and real Nix: refs, commit tags, the package list, scripts.

The revision tests serve a `git+file://` copy of the fixture flake with several commits, a branch
the policy does not allow (`hidden`, standing in for a commit pushed to some fork) and a git tag.
"""

from __future__ import annotations

import json
import pwd
import re
from pathlib import Path

import pytest
from e2e_support import (
    FIXTURE_FLAKES,
    OCI_ACCEPT,
    ForgeFactory,
    ForgeProcess,
    GitFlake,
    revision_of,
    run_tool,
)

NIX_RUN = re.compile(r"running \S*nix (?:flake|build|eval|path-info)")


@pytest.fixture
def git_flake(tmp_path: Path, nonce: str) -> GitFlake:
    """main: one (tagged v1), two, three; branch `hidden` off two with a commit no allowed ref has."""
    repo = GitFlake.create(FIXTURE_FLAKES / "forge", tmp_path / "repo", nonce)
    repo.commit("one")
    repo.git("tag", "v1")
    repo.commit("two")
    repo.git("checkout", "-q", "-b", "hidden")
    repo.commit("hidden")
    repo.git("checkout", "-q", "main")
    repo.commit("three")
    return repo


def nix_runs(forge: ForgeProcess) -> int:
    """How many nix commands the registry has started so far (logged at DEBUG)."""
    return len(forge.matching_lines(NIX_RUN))


def refused(forge: ForgeProcess, path: str, code: str) -> dict:
    """GET `path`; assert a 404 with the OCI error `code` and no nix process; return the error."""
    before = nix_runs(forge)
    response = forge.get(path, {"Accept": OCI_ACCEPT})
    assert response.status == 404, (path, response.status, response.body[:500])
    [error] = response.json()["errors"]
    assert error["code"] == code, error
    assert nix_runs(forge) == before, forge.log_tail()
    return error


def test_refs_and_known_commit_tags_survive_a_restart(forge_factory: ForgeFactory, git_flake: GitFlake) -> None:
    """latest and allowed refs lock revisions; only those commits are served, for any package, after a restart."""
    revs = git_flake.revisions
    forge = forge_factory(flake=git_flake.ref, extra_args=["--refs", "main,v*"])
    for commit in (revs["three"], revs["one"], revs["hidden"]):
        error = refused(forge, f"/v2/hello/manifests/{commit}", "MANIFEST_UNKNOWN")
        assert error["detail"]["refused_by"] == "NIXFORGE_COMMIT_TAGS"
    error = refused(forge, "/v2/hello/manifests/hidden", "MANIFEST_UNKNOWN")
    assert error["detail"] == {"tag": "hidden", "refused_by": "NIXFORGE_REFS",
                               "reason": "this branch or git tag is not one the registry serves"}
    refused(forge, "/v2/hello/manifests/Main", "MANIFEST_UNKNOWN")  # globs are case-sensitive

    assert revision_of(forge, "hello", "latest") == revs["three"]
    assert revision_of(forge, "hello", revs["three"]) == revs["three"]
    assert revision_of(forge, "hello", "v1") == revs["one"]
    # A revision locked for hello is one of the whole flake: tool-b may be pulled at it too.
    assert revision_of(forge, "tool-b", revs["one"]) == revs["one"]
    inspected = json.loads(run_tool(["skopeo", "inspect", "--tls-verify=false",
                                     f"docker://{forge.registry}/hello:{revs['one']}"]).stdout)
    assert inspected["Digest"].startswith("sha256:")
    refused(forge, f"/v2/hello/manifests/{revs['two']}", "MANIFEST_UNKNOWN")  # never locked
    refused(forge, f"/v2/hello/manifests/{revs['hidden']}", "MANIFEST_UNKNOWN")
    listed = forge.get("/v2/hello/tags/list").json()["tags"]
    assert sorted(listed) == sorted(["latest", "v1", revs["three"], revs["one"]])

    forge.restart()
    assert revision_of(forge, "packages/tool-b", revs["three"]) == revs["three"]  # never built before
    assert revision_of(forge, "tool-a", revs["one"]) == revs["one"]
    refused(forge, f"/v2/tool-a/manifests/{revs['hidden']}", "MANIFEST_UNKNOWN")
    files = list((forge.data_dir / "revisions").iterdir())
    recorded = {json.loads(path.read_text())["revision"]: json.loads(path.read_text())["refs"] for path in files}
    assert recorded == {revs["three"]: ["latest"], revs["one"]: ["v1"]}

    # Narrowing NIXFORGE_REFS withdraws what only v1 vouched for, even though it is built and stored.
    forge.extra_args = ["--refs", "main"]
    forge.restart()
    refused(forge, f"/v2/hello/manifests/{revs['one']}", "MANIFEST_UNKNOWN")
    refused(forge, "/v2/hello/manifests/v1", "MANIFEST_UNKNOWN")
    assert revision_of(forge, "hello", revs["three"]) == revs["three"]
    assert sorted(forge.get("/v2/hello/tags/list").json()["tags"]) == sorted(["latest", revs["three"]])


def test_commit_tags_any_and_none(forge_factory: ForgeFactory, git_flake: GitFlake) -> None:
    """`any` builds a commit no ref vouches for; `none` refuses even the commit latest is at."""
    revs = git_flake.revisions
    anything = forge_factory("any", flake=git_flake.ref, extra_args=["--commit-tags", "any"])
    assert revision_of(anything, "hello", revs["hidden"]) == revs["hidden"]
    assert list((anything.data_dir / "revisions").iterdir()) == []  # a pulled commit vouches for nothing

    nothing = forge_factory("none", flake=git_flake.ref, extra_args=["--commit-tags", "none"])
    assert revision_of(nothing, "hello", "latest") == revs["three"]
    assert revision_of(nothing, "hello", "main") == revs["three"]
    error = refused(nothing, f"/v2/hello/manifests/{revs['three']}", "MANIFEST_UNKNOWN")
    assert error["detail"]["refused_by"] == "NIXFORGE_COMMIT_TAGS"
    assert "NIXFORGE_COMMIT_TAGS=none" in error["detail"]["reason"]


def test_names_outside_the_package_list_are_unknown_on_every_route(forge_factory: ForgeFactory) -> None:
    """NIXFORGE_PACKAGES: 404 NAME_UNKNOWN for manifests, blobs, tags/list; absent from _catalog; no Nix."""
    forge = forge_factory(extra_args=["--packages", "hello,tool-*,applications/app1/web"])
    served = forge.manifest("hello")
    hello_digest = served.headers["docker-content-digest"]
    layer = served.json()["layers"][0]["digest"]
    tool = forge.manifest("packages/tool-b").json()
    assert forge.manifest("applications/app1/web").status == 200
    for name in ("greet", "streamed", "packages/streamed", "applications/app1/db"):
        for path in (f"/v2/{name}/manifests/latest", f"/v2/{name}/blobs/{layer}", f"/v2/{name}/tags/list"):
            error = refused(forge, path, "NAME_UNKNOWN")
            assert error["detail"]["refused_by"] == "NIXFORGE_PACKAGES", error
    # The flake's catalog (filtered) merged with what was built.
    assert forge.get("/v2/_catalog").json()["repositories"] == [
        "applications/app1/web", "hello", "packages/tool-b", "tool-a", "tool-b"]

    # Built and stored before, refused now: the policy comes before the index.
    forge.extra_args = ["--packages", "tool-*"]
    forge.restart()
    for path in ("/v2/hello/manifests/latest", f"/v2/hello/manifests/{hello_digest}",
                 f"/v2/hello/blobs/{layer}", "/v2/hello/tags/list"):
        refused(forge, path, "NAME_UNKNOWN")
    assert forge.get("/v2/_catalog").json()["repositories"] == ["packages/tool-b", "tool-a", "tool-b"]
    assert forge.manifest("packages/tool-b").json() == tool


def test_an_image_script_runs_as_nobody_and_inherits_nothing(forge_factory: ForgeFactory) -> None:
    """As root, `whoami.image` runs as nobody, no supplementary groups, in /, with only the minimal environment."""
    marker = "nixforge-e2e-secret-marker"
    forge = forge_factory(extra_env={"NIXFORGE_E2E_MARKER": marker, "AWS_SECRET_ACCESS_KEY": marker})
    assert forge.manifest("whoami").status == 200
    nobody = pwd.getpwnam("nobody")
    [identity] = forge.matching_lines(re.compile(r"nixforge-script-identity "))
    assert identity.endswith(f"uid={nobody.pw_uid} gid={nobody.pw_gid} groups={nobody.pw_gid} cwd=/"), identity
    environment = dict(line.split("nixforge-script-env ", 1)[1].split("=", 1)
                       for line in forge.matching_lines(re.compile(r"nixforge-script-env ")))
    environment.pop("PWD", None)
    environment.pop("SHLVL", None)
    assert environment == {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
    assert marker not in forge.log_text()
