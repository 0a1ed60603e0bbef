"""A slow first pull with a short NIXFORGE_PULL_WAIT: real clients get the retryable answer, their retry
gets the image, and the build runs once."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

from e2e_support import (
    FIXTURE_FLAKES,
    OCI_ACCEPT,
    ForgeFactory,
    ForgeProcess,
    Podman,
    http_request,
    prepare_flake,
    require_tool,
    run_tool,
    wait_until,
)
from test_e2e_containerd import Containerd, containerd  # noqa: F401 (the module's containerd fixture)

PULL_WAIT = "2"
SLOW = "drip"  # builds for about 8 s, printing a line a second
BUILD_STARTED = re.compile(rf"build started {SLOW}:latest ")
BUILD_FINISHED = re.compile(rf"build finished {SLOW}:latest ")
TOO_MANY = re.compile(rf'(GET|HEAD) /v2/{SLOW}/manifests/latest 429 ')
REPORT = os.environ.get("NIXFORGE_PULL_WAIT_REPORT")


def slow_forge(forge_factory: ForgeFactory, tmp_path: Path, label: str) -> ForgeProcess:
    """A registry on a flake copy of its own (a fresh nonce: `drip` really builds) with a 2 s pull wait."""
    flake = prepare_flake(FIXTURE_FLAKES / "forge", tmp_path / label / "flake", secrets.token_hex(6))
    return forge_factory(label, flake=f"path:{flake}", extra_args=["--pull-wait", PULL_WAIT])


def record(client: str, first: object, again: object, forge: ForgeProcess) -> None:
    """Keep what the client printed and how often it was told 429 (for the docs), when
    NIXFORGE_PULL_WAIT_REPORT names a file."""
    if REPORT:
        entries = json.loads(Path(REPORT).read_text()) if Path(REPORT).exists() else {}
        entries[client] = {"first": first, "again": again, "answers_429": len(forge.matching_lines(TOO_MANY))}
        Path(REPORT).write_text(json.dumps(entries, indent=2))


def outcome(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """A client run, as the report keeps it."""
    return {"rc": done.returncode, "stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:]}


def assert_one_build(forge: ForgeProcess) -> None:
    assert wait_until(lambda: bool(forge.matching_lines(BUILD_FINISHED)), 120), forge.log_tail()
    forge.sync_log()
    assert len(forge.matching_lines(BUILD_STARTED)) == 1, forge.log_tail()


def test_a_pull_past_the_wait_is_429_naming_the_build_and_its_log(forge_factory: ForgeFactory, tmp_path: Path) -> None:
    forge = slow_forge(forge_factory, tmp_path, "raw")
    started = time.monotonic()
    head = http_request(forge.url(f"/v2/{SLOW}/manifests/latest"), headers={"Accept": OCI_ACCEPT}, method="HEAD")
    assert head.status == 429 and head.headers["retry-after"] == "10", (head.status, head.headers)
    assert time.monotonic() - started < 6
    answers = []

    def building() -> bool:  # the first answers may come while the flake is still locked and probed
        answers.append(forge.get(f"/v2/{SLOW}/manifests/latest", {"Accept": OCI_ACCEPT}))
        return "build" in answers[-1].json()["errors"][0]["detail"]

    assert wait_until(building, 30, interval=0), [answer.body for answer in answers]
    assert all(answer.status == 429 and answer.error_codes() == ["TOOMANYREQUESTS"] for answer in answers)
    (error,) = answers[-1].json()["errors"]
    build = error["detail"]["build"]
    assert error["detail"]["build_log"] == f"/-/builds/{build}/log"
    assert f"build {build}" in error["message"] and f"/-/builds/{build}/log" in error["message"]
    log = forge.get(f"/-/builds/{build}/log")  # follows the build to its end
    assert log.status == 200 and "nixforge-drip line 8" in log.body.decode()
    assert forge.manifest(SLOW).status == 200  # the build went on: the retry gets the image at once
    assert_one_build(forge)


def test_skopeo_gets_the_429_and_its_retry_gets_the_image(forge_factory: ForgeFactory, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    forge = slow_forge(forge_factory, tmp_path, "skopeo")
    argv = [skopeo, "inspect", "--tls-verify=false", f"docker://{forge.registry}/{SLOW}:latest"]
    first = run_tool(argv, check=False)
    forge.sync_log()
    assert forge.matching_lines(TOO_MANY), forge.log_tail()  # it got the retryable answer at least once
    assert_one_build(forge)
    again = run_tool(argv, check=False)
    record("skopeo inspect", outcome(first), outcome(again), forge)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["Digest"].startswith("sha256:")


def test_podman_gets_the_429_and_its_retry_gets_the_image(forge_factory: ForgeFactory, tmp_path: Path,
                                                          podman: Podman) -> None:
    forge = slow_forge(forge_factory, tmp_path, "podman")
    image = f"{forge.registry}/{SLOW}:latest"
    first = run_tool([*podman.base(), "pull", "--tls-verify=false", image], check=False)
    forge.sync_log()
    assert forge.matching_lines(TOO_MANY), forge.log_tail()
    assert_one_build(forge)
    again = run_tool([*podman.base(), "pull", "--tls-verify=false", image], check=False)
    record("podman pull", outcome(first), outcome(again), forge)
    assert again.returncode == 0, again.stderr


def test_ctr_gets_the_429_and_its_retry_gets_the_image(forge_factory: ForgeFactory, tmp_path: Path,
                                                       containerd: Containerd) -> None:  # noqa: F811
    forge = slow_forge(forge_factory, tmp_path, "ctr")
    image = f"{forge.registry}/{SLOW}:latest"
    first = containerd.ctr("images", "pull", "--plain-http", image, check=False, timeout=600)
    forge.sync_log()
    assert forge.matching_lines(TOO_MANY), forge.log_tail()
    assert_one_build(forge)
    again = containerd.ctr("images", "pull", "--plain-http", image, check=False, timeout=600)
    record("ctr images pull", outcome(first), outcome(again), forge)
    assert again.returncode == 0, again.stderr
    containerd.ctr("images", "rm", image, check=False)
