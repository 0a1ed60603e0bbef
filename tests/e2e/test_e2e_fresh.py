"""Issue 8 against a real twistd and real Nix: GC roots, the catalog, the refresh webhook, failures remembered.

The freshness tests serve a `git+file://` flake the test commits to with real `git`.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

from e2e_support import (
    FIXTURE_FLAKES,
    OCI_ACCEPT,
    ForgeFactory,
    ForgeProcess,
    GitFlake,
    HttpResponse,
    revision_of,
    run_tool,
    wait_until,
)

# A GitHub push event, as its webhook POSTs it (trimmed): nixforge reads a bounded part and ignores it.
GITHUB_PUSH = json.dumps({
    "ref": "refs/heads/main", "before": "0" * 40, "after": "1" * 40,
    "repository": {"full_name": "o/forge"}, "pusher": {"name": "someone"},
    "commits": [{"id": "1" * 40, "message": "x" * 200}] * 100,
}).encode()
WEBHOOK_HEADERS = {"Content-Type": "application/json", "X-GitHub-Event": "push"}


def nix_store(*args: str, check: bool = True) -> str:
    """Run `nix-store ARGS` (argv list); return its stdout."""
    return run_tool(["nix-store", *args], check=check).stdout


def held_roots(forge: ForgeProcess) -> list[Path]:
    """The out-links nixforge holds now in its data dir."""
    directory = forge.data_dir / "gcroots"
    return sorted(directory.iterdir()) if directory.is_dir() else []


def post_refresh(forge: ForgeProcess, path: str = "/-/refresh") -> HttpResponse:
    """POST the webhook's JSON to a refresh endpoint."""
    return forge.get(path, WEBHOOK_HEADERS, method="POST", data=GITHUB_PUSH)


def count(forge: ForgeProcess, pattern: str) -> int:
    """Log lines so far (read up to now) that match `pattern`."""
    forge.sync_log()
    return len(forge.matching_lines(re.compile(pattern)))


# -- Nix's side: GC roots ------------------------------------------------------------------------


def test_a_build_output_is_a_gc_root_until_its_image_is_stored(forge_factory: ForgeFactory) -> None:
    """Mid-ingest the output is rooted by nixforge's out-link and Nix's GC can't take it; after, it can."""
    forge = forge_factory(build_timeout=25)
    pulled: list[HttpResponse] = []
    # slowstream.image is a script that sleeps 120 s: the ingest runs it until the build timeout.
    pull = threading.Thread(target=lambda: pulled.append(
        forge.get("/v2/slowstream/manifests/latest", {"Accept": OCI_ACCEPT})))
    pull.start()
    try:
        # Two roots: the image script, and the package it wraps (its closure is read for the SBOM).
        assert wait_until(lambda: len(held_roots(forge)) == 2, 120), forge.log_tail()
        [link] = [link for link in held_roots(forge) if os.readlink(link).endswith("stream-slowstream")]
        output = os.readlink(link)
        assert output.startswith("/nix/store/")
        assert str(link) in nix_store("--query", "--roots", output)
        assert output not in nix_store("--gc", "--print-dead").split()
        refused = run_tool(["nix-store", "--delete", output], check=False)
        assert refused.returncode != 0 and "still alive" in refused.stderr, refused.stderr
        assert Path(output).exists()
    finally:
        pull.join(120)
    assert pulled and pulled[0].status == 504, (pulled, forge.log_tail())
    assert held_roots(forge) == []  # dropped on timeout too
    assert wait_until(lambda: output in nix_store("--gc", "--print-dead").split(), 30)

    for name in ("hello", "tool-a", "applications/app1/web"):  # an image, a closure, an application
        forge.manifest(name)
        assert held_roots(forge) == [], name


def test_gc_roots_left_by_a_crash_are_removed_at_start_up(forge_factory: ForgeFactory) -> None:
    forge = forge_factory()
    forge.manifest("hello")
    forge.stop()
    leftover = forge.data_dir / "gcroots" / "build-0123456789abcdef"
    leftover.parent.mkdir(exist_ok=True)
    leftover.symlink_to(os.readlink("/proc/self/exe"))
    (forge.data_dir / "gcroots" / "build-0123456789abcdef-dev").symlink_to("/nix/store/gone")
    forge.start()
    assert held_roots(forge) == []
    assert forge.matching_lines(re.compile("removed the Nix GC roots a previous run left"))


# -- failures remembered -------------------------------------------------------------------------


def test_three_pulls_of_a_broken_package_are_one_build_until_a_refresh(forge_factory: ForgeFactory) -> None:
    forge = forge_factory()
    builds = r"running \S*nix build .*#broken"
    answers = [forge.get("/v2/broken/manifests/latest", {"Accept": OCI_ACCEPT}) for _ in range(3)]
    assert {answer.status for answer in answers} == {500}
    assert len({answer.body for answer in answers}) == 1  # same code, message and detail
    [error] = answers[0].json()["errors"]
    assert error["code"] == "UNKNOWN" and "deliberate failure" in json.dumps(error["detail"])
    assert count(forge, builds) == 1

    response = post_refresh(forge, "/-/refresh/broken")
    assert (response.status, response.json()) == (202, {"repository": "broken", "scheduled": []})
    assert forge.get("/v2/broken/manifests/latest", {"Accept": OCI_ACCEPT}).status == 500
    assert count(forge, builds) == 2


# -- discovery -----------------------------------------------------------------------------------


def test_the_catalog_lists_the_flake_with_one_eval_filtered_and_paged(forge_factory: ForgeFactory) -> None:
    forge = forge_factory(extra_args=["--packages", "hello,tool-*,app1,applications/app1/*"])
    flake_listed = ["app1", "applications/app1/db", "applications/app1/web", "hello", "tool-a", "tool-b"]
    assert forge.get("/v2/_catalog").json() == {"repositories": flake_listed}
    first = forge.get("/v2/_catalog?n=4")
    assert first.json()["repositories"] == flake_listed[:4]
    assert first.headers["link"] == '</v2/_catalog?n=4&last=hello>; rel="next"'
    assert forge.get("/v2/_catalog?n=4&last=hello").json()["repositories"] == flake_listed[4:]
    assert forge.get("/v2/tool-a/tags/list").json() == {"name": "tool-a", "tags": ["latest"]}  # never built
    forge.manifest("packages/tool-b")
    assert forge.get("/v2/_catalog").json()["repositories"] == sorted([*flake_listed, "packages/tool-b"])
    assert count(forge, r"running \S*nix eval .*#packages\.x86_64-linux") == 1
    # Every name, listing and pull above shared one lock of latest.
    locks = count(forge, r"running \S*nix flake metadata --json --refresh")
    assert locks == 1
    # A refresh locks latest again, once for the rebuild of tool-b and the listing together; unchanged,
    # so the catalog is not evaluated again.
    assert post_refresh(forge).status == 202
    assert forge.get("/v2/_catalog").json()["repositories"] == sorted([*flake_listed, "packages/tool-b"])
    assert wait_until(lambda: count(forge, r"build of packages/tool-b:latest|packages/tool-b:latest unchanged") >= 1,
                      60), forge.log_tail()
    assert count(forge, r"running \S*nix flake metadata --json --refresh") == locks + 1
    assert count(forge, r"running \S*nix eval .*#packages\.x86_64-linux") == 1


# -- freshness: the refresh webhook on a git flake -----------------------------------------------


def test_the_refresh_webhook_re_resolves_moving_tags_and_pulls_never_wait(
    forge_factory: ForgeFactory, tmp_path: Path, nonce: str
) -> None:
    repo = GitFlake.create(FIXTURE_FLAKES / "forge", tmp_path / "repo", nonce)
    one = repo.commit("one")
    forge = forge_factory(flake=repo.ref, extra_args=["--refresh-interval", "3600"])
    assert revision_of(forge, "fresh", "latest") == one
    assert revision_of(forge, "hello", "main") == one
    assert forge.get("/v2/hello/tags/list").json()["tags"] == ["latest", "main"]
    stored = forge.manifest("fresh").headers["docker-content-digest"]
    # Each moving ref was locked once (with --refresh), however many pulls and listings used it.
    assert count(forge, r"running \S*nix flake metadata --json") == 2

    # A push that changes `fresh` (its derivation reads ./nonce): its rebuild sleeps 2 s.
    two = repo.commit("two", "nonce", nonce + "-two")
    response = post_refresh(forge)
    assert response.status == 202, response.body
    assert response.json() == {"repository": None, "scheduled": ["fresh:latest", "hello:main"]}
    served = forge.manifest("fresh")  # answered from the store while the rebuild runs
    assert served.headers["docker-content-digest"] == stored
    assert count(forge, r"build finished fresh:latest") == 1, forge.log_tail()
    assert wait_until(lambda: count(forge, r"build finished fresh:latest") == 2, 120), forge.log_tail()
    assert revision_of(forge, "fresh", "latest") == two
    assert wait_until(lambda: revision_of(forge, "hello", "main") == two, 120), forge.log_tail()
    assert count(forge, r"running \S*nix flake metadata --json --refresh") == 4  # each ref once more

    # One repository; other methods; a broken flake leaves _catalog listing what was built.
    assert post_refresh(forge, "/-/refresh/hello").json() == {"repository": "hello", "scheduled": ["hello:main"]}
    refused = forge.get("/-/refresh")
    assert refused.status == 405 and refused.error_codes() == ["UNSUPPORTED"]
    repo.commit("broken", "flake.nix", '{ outputs = { self }: { packages = throw "nixforge-test: no packages"; }; }\n')
    assert post_refresh(forge).status == 202
    assert forge.get("/v2/_catalog").json()["repositories"] == ["fresh", "hello"]
    assert count(forge, r"the flake's catalog is unavailable") >= 1
    assert forge.manifest("fresh").headers["docker-content-digest"] != stored  # still served, as built at two


def test_the_refresh_webhook_is_loopback_only_unless_opened(forge_factory: ForgeFactory) -> None:
    forge = forge_factory(extra_args=["--refresh-from", "10.0.0.0/8"])
    denied = post_refresh(forge)
    assert denied.status == 403 and denied.error_codes() == ["DENIED"]
    assert denied.json()["errors"][0]["detail"] == {"client": "127.0.0.1"}
