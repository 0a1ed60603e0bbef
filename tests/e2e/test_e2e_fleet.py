"""The first pull as a fleet meets it: made-up names cost no Nix, one lock per interval, images prebuilt
when latest moves, and a blob served only under a name whose images name it."""

from __future__ import annotations

import http.client
import re
import time
from pathlib import Path
from urllib.parse import urlparse

from e2e_support import (
    FIXTURE_FLAKES,
    NIX_RUN,
    OCI_ACCEPT,
    ForgeFactory,
    ForgeProcess,
    GitFlake,
    revision_of,
    wait_until,
)

LOCK = re.compile(r"running \S*nix flake metadata ")
CATALOG = re.compile(r"running \S*nix eval .*#packages\.x86_64-linux$")
WEBHOOK = {"Content-Type": "application/json", "X-GitHub-Event": "push"}


def count(forge: ForgeProcess, pattern: re.Pattern[str]) -> int:
    """Log lines so far that match `pattern`."""
    forge.sync_log()
    return len(forge.matching_lines(pattern))


def test_a_thousand_made_up_names_cost_one_lock_and_one_catalog(forge_factory: ForgeFactory) -> None:
    forge = forge_factory()
    names = [f"zz-nope-{i}" for i in range(400)] + [f"made{i}.up" for i in range(300)] + \
            [f"hello.x{i}" for i in range(200)] + [f"packages/nope{i}" for i in range(100)]
    assert len(set(names)) == 1000
    started = time.monotonic()
    address = urlparse(forge.url("/"))
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    statuses: dict[int, int] = {}
    for name in names:  # one kept-alive connection, as a client loop would
        connection.request("GET", f"/v2/{name}/manifests/latest", headers={"Accept": OCI_ACCEPT})
        response = connection.getresponse()
        body = response.read()
        statuses[response.status] = statuses.get(response.status, 0) + 1
        assert b"NAME_UNKNOWN" in body, (name, response.status, body[:300])
    connection.close()
    elapsed = time.monotonic() - started
    assert statuses == {404: 1000}
    assert count(forge, LOCK) == 1, forge.log_tail()
    assert count(forge, CATALOG) == 1, forge.log_tail()
    assert count(forge, NIX_RUN) == 2, forge.log_tail()  # nothing else: no probe, no build
    print(f"\n1000 made-up names: {count(forge, LOCK)} flake metadata, {count(forge, CATALOG)} catalog eval, "
          f"{count(forge, NIX_RUN)} Nix runs in all, {elapsed:.2f} s")


def test_latest_moving_prebuilds_the_matching_images_before_anyone_pulls(
    forge_factory: ForgeFactory, tmp_path: Path, nonce: str
) -> None:
    repo = GitFlake.create(FIXTURE_FLAKES / "forge", tmp_path / "repo", nonce)
    one = repo.commit("one")
    forge = forge_factory(flake=repo.ref, extra_args=["--prebuild", "hello,fresh", "--refresh-interval", "3600"])
    # At start: latest is locked and both images build, with no pull.
    for name in ("hello", "fresh"):
        assert wait_until(lambda name=name: count(forge, re.compile(rf"build finished {name}:latest ")) == 1,
                          120), forge.log_tail()
    assert count(forge, re.compile(r"build (started|finished) (?!hello:|fresh:)")) == 0  # only the globs
    assert count(forge, re.compile(r"(GET|HEAD) /v2/\S+/manifests/")) == 0  # nobody pulled
    builds = forge.get("/-/builds").json()["builds"]
    assert {(b["name"], b["state"]) for b in builds} >= {("hello", "success"), ("fresh", "success")}, builds
    # A pull now is served from the store: no build.
    assert revision_of(forge, "fresh", "latest") == one
    assert count(forge, re.compile(r"build started fresh:latest ")) == 1
    # A push that changes `fresh`, then the webhook: prebuilt at the new revision before any pull.
    two = repo.commit("two", "nonce", nonce + "-two")
    response = forge.get("/-/refresh", WEBHOOK, method="POST", data=b"{}")
    assert response.status == 202, response.body
    assert wait_until(lambda: count(forge, re.compile(r"build finished fresh:latest ")) == 2, 120), forge.log_tail()
    pulls_before = count(forge, re.compile(r"GET /v2/fresh/manifests/latest "))
    assert revision_of(forge, "fresh", "latest") == two
    assert count(forge, re.compile(r"build started fresh:latest ")) == 2  # the pull built nothing
    assert count(forge, re.compile(r"GET /v2/fresh/manifests/latest 200 ")) == pulls_before + 1
    metrics = forge.get("/metrics").body.decode()
    assert re.search(r'nixforge_builds_total\{outcome="success"\} [3-9]', metrics), metrics[:2000]


def layer_of(forge: ForgeProcess, name: str) -> str:
    """The first layer digest of name:latest's OCI manifest."""
    return forge.manifest(name).json()["layers"][0]["digest"]


def test_a_blob_is_served_only_under_a_name_whose_images_name_it(forge_factory: ForgeFactory,
                                                                 tmp_path: Path) -> None:
    forge = forge_factory(extra_args=["--packages", "hello,tool-*"])
    hello, tool_a = layer_of(forge, "hello"), layer_of(forge, "tool-a")
    assert forge.get(f"/v2/hello/blobs/{hello}").status == 200
    config = forge.manifest("tool-a").json()["config"]["digest"]
    assert forge.get(f"/v2/tool-a/blobs/{config}").status == 200
    for name, digest in (("hello", tool_a), ("tool-a", hello), ("hello", config)):
        for method in ("GET", "HEAD"):
            answer = forge.get(f"/v2/{name}/blobs/{digest}", method=method)
            assert answer.status == 404, (name, digest, method, answer.status)
            if method == "GET":
                assert answer.error_codes() == ["BLOB_UNKNOWN"]
    # tool-a refused from now on: its blobs are served under no name, its name is unknown.
    forge.stop()
    refused = forge_factory(data_dir=forge.data_dir, extra_args=["--packages", "hello"])
    assert refused.get(f"/v2/hello/blobs/{hello}").status == 200
    assert refused.get(f"/v2/hello/blobs/{tool_a}").error_codes() == ["BLOB_UNKNOWN"]
    assert refused.get(f"/v2/tool-a/blobs/{tool_a}").error_codes() == ["NAME_UNKNOWN"]
