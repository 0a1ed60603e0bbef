"""Operating a real `twistd -n nixforge`: follow a real build's log live, metrics after real pulls,
health and readiness, the access log, and what authentication covers."""

from __future__ import annotations

import base64
import http.client
import re
import secrets
import threading
from pathlib import Path

import pytest
from e2e_support import (
    FIXTURE_FLAKES,
    ForgeFactory,
    ForgeProcess,
    http_request,
    prepare_flake,
    require_tool,
    run_tool,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def fresh_flake(tmp_path: Path) -> str:
    """The fixture flake with a nonce of its own, so chatty and broken really build in this test."""
    return f"path:{prepare_flake(FIXTURE_FLAKES / 'forge', tmp_path / 'flake', secrets.token_hex(6))}"


def samples(forge: ForgeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and sorted labels."""
    response = forge.get("/metrics")
    assert response.status == 200 and response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_waiting_user_follows_the_build_log_live(forge_factory: ForgeFactory, fresh_flake: str) -> None:
    """While a pull of chatty waits on its build, /-/builds lists it running and its log streams,
    chunked, line by line before the build ends; the stream ends with the outcome."""
    forge = forge_factory(flake=fresh_flake, log_level="INFO")
    pulled: list[int] = []
    pull = threading.Thread(target=lambda: pulled.append(forge.manifest("chatty").status))
    pull.start()
    builds: list[dict] = []

    def running() -> bool:
        builds[:] = [b for b in forge.get("/-/builds").json()["builds"] if b["name"] == "chatty"]
        return bool(builds) and builds[0]["state"] == "running"

    assert wait_until(running, timeout=120, interval=0.05), forge.log_tail()
    build = builds[0]
    assert build["tag"] == "latest" and build["phase"] in ("queued", "build") and build["finished"] is None
    assert build["locked"] == "path:<host path>" and build["error"] is None  # no host path outside /nix/store
    connection = http.client.HTTPConnection("127.0.0.1", forge.port, timeout=120)
    connection.request("GET", f"/-/builds/{build['id']}/log")
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
    lines = []
    live = None
    while True:
        raw = response.readline()
        if not raw:
            break
        line = raw.decode().rstrip("\n")
        lines.append(line)
        if live is None and "nixforge-chatty line 1 {braces} %s" in line:
            live = not pull.is_alive()  # False: the line came while the pull still waited
    connection.close()
    pull.join(120)
    assert live is False, lines
    numbers = [int(m.group(1)) for m in (re.search(r"nixforge-chatty line (\d)", x) for x in lines) if m]
    assert numbers == [1, 2, 3, 4, 5], lines
    assert lines[-1] == "[nixforge: build success]"
    assert pulled == [200]
    done = next(b for b in forge.get("/-/builds").json()["builds"] if b["id"] == build["id"])
    assert done["state"] == "success" and done["finished"] is not None
    # A finished build's log is all there at once, and ends.
    again = forge.get(f"/-/builds/{build['id']}/log")
    assert again.body.decode().splitlines() == lines
    # The access log: one line per request, with the build id on the request that started it.
    forge.sync_log()
    line = re.compile(r'GET /v2/chatty/manifests/latest 200 \d+ [0-9.]+s "[^"]*" build=' + build["id"])
    started = forge.matching_lines(line)
    assert len(started) == 1, forge.log_tail(60)
    assert not forge.matching_lines(re.compile(r'"GET /v2/chatty/manifests/latest HTTP/1.1"'))  # no combined log


def test_a_failed_pull_names_its_build(forge_factory: ForgeFactory, fresh_flake: str) -> None:
    """The error of a failed pull carries detail.build; that build's log and state say it failed."""
    forge = forge_factory(flake=fresh_flake, log_level="INFO")
    answer = forge.get("/v2/broken/manifests/latest")
    assert answer.status == 500, answer.body
    build_id = answer.json()["errors"][0]["detail"]["build"]
    record = next(b for b in forge.get("/-/builds").json()["builds"] if b["id"] == build_id)
    assert record["state"] == "failure" and record["name"] == "broken" and record["error"]
    log_text = forge.get(f"/-/builds/{build_id}/log").body.decode()
    assert log_text.splitlines()[-1].startswith("[nixforge: build failure")
    flake_dir = fresh_flake.removeprefix("path:")
    assert flake_dir not in log_text and flake_dir not in forge.get("/-/builds").body.decode()
    found = samples(forge)
    assert value(found, "nixforge_builds_total", outcome="failure") == 1
    assert forge.get("/-/builds/000000000000/log").error_codes() == ["NAME_UNKNOWN"]


def test_metrics_move_after_real_pulls(forge_factory: ForgeFactory) -> None:
    """After a pull of hello and a blob, the build, request, blob, store and cache series moved;
    routes are templates, never raw paths."""
    forge = forge_factory(log_level="INFO")
    before = samples(forge)
    assert value(before, "nixforge_builds_total", outcome="success") == 0
    manifest = forge.manifest("hello")
    assert manifest.status == 200
    layer = manifest.json()["layers"][0]
    assert len(forge.blob("hello", layer["digest"])) == layer["size"]
    forge.manifest("hello")  # stored now: from the cache
    assert forge.get("/v2/no-such-thing/blobs/sha256:" + "0" * 64).status == 404
    found = samples(forge)
    assert value(found, "nixforge_builds_total", outcome="success") == 1
    assert value(found, "nixforge_build_duration_seconds_count", phase="build") == 1
    assert value(found, "nixforge_build_duration_seconds_count", phase="plan") == 1
    assert value(found, "nixforge_http_requests_total", method="GET", route="/v2/{name}/manifests/{reference}",
                 code="200") == 2
    assert value(found, "nixforge_http_requests_total", method="GET", route="/v2/{name}/blobs/{digest}",
                 code="404") == 1
    assert value(found, "nixforge_blob_sent_bytes_total") == layer["size"]
    assert value(found, "nixforge_builds_running") == 0 and value(found, "nixforge_builds_queued") == 0
    assert value(found, "nixforge_store_bytes") > layer["size"] and value(found, "nixforge_store_blobs") >= 3
    assert value(found, "nixforge_manifest_cache_hits_total") > value(before, "nixforge_manifest_cache_hits_total")
    assert all("no-such-thing" not in str(key) for key in found)


def test_health_and_readiness(forge: ForgeProcess) -> None:
    """/healthz answers at once; /readyz turns 200 once the periodic check (nix --version, a temp
    file in the data dir) has run."""
    assert forge.get("/healthz").json() == {"status": "alive"}
    assert wait_until(lambda: forge.get("/readyz").status == 200, timeout=30), forge.get("/readyz").body
    assert forge.get("/readyz").json() == {"status": "ready"}


def test_readiness_says_what_is_wrong(forge_factory: ForgeFactory, tmp_path: Path) -> None:
    """With a nix that does not run, /readyz is 503 JSON naming it; /healthz still 200; probes
    answer the cached check and start no process."""
    fake = tmp_path / "bin" / "nix"
    fake.parent.mkdir()
    runs = tmp_path / "runs"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {runs}\nexit 3\n")
    fake.chmod(0o755)
    forge = forge_factory(extra_args=["--nix", str(fake)])

    def problems() -> list[str]:
        answer = forge.get("/readyz")
        assert answer.status == 503 and answer.json()["errors"][0]["code"] == "UNAVAILABLE"
        return [problem.split(":")[0] for problem in answer.json()["errors"][0]["detail"]["problems"]]

    # 503 at once (not checked yet), then 503 saying why once the first check has run.
    assert wait_until(lambda: problems() == ["nix does not run"], timeout=30), problems()
    assert forge.get("/healthz").status == 200
    before = runs.read_text().splitlines()
    for _ in range(20):
        assert forge.get("/readyz").status == 503
    assert before == ["--version"] and len(runs.read_text().splitlines()) <= 2  # the timer's, not the probes'



def test_with_authentication_only_the_probes_are_open(forge_factory: ForgeFactory, tmp_path: Path) -> None:
    """--htpasswd: /metrics and /-/builds need credentials, /healthz and /readyz do not."""
    password_file = tmp_path / "htpasswd"
    run_tool([require_tool("htpasswd"), "-c", "-bB", str(password_file), "alice", "alices-pw"])
    forge = forge_factory(extra_args=["--htpasswd", str(password_file)])
    for path in ("/metrics", "/-/builds", "/-/builds/abc/log"):
        assert forge.get(path).status == 401, path
    assert forge.get("/healthz").status == 200
    assert forge.get("/readyz").status in (200, 503)  # answered, not challenged
    token = base64.b64encode(b"alice:alices-pw").decode()
    assert http_request(forge.url("/metrics"), headers={"Authorization": f"Basic {token}"}).status == 200
