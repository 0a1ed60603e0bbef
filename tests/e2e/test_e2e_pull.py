"""Pulls from a real `twistd -n nixforge` building the fixture flake with Nix: skopeo, urllib, podman."""

from __future__ import annotations

import gzip
import io
import json
import re
import socket
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_support import (
    BUILD_STARTED,
    CLEAN_EXIT,
    DOCKER_ACCEPT,
    DOCKER_MANIFEST,
    NIX_RUN,
    OCI_ACCEPT,
    OCI_MANIFEST,
    ForgeFactory,
    ForgeProcess,
    Podman,
    http_request,
    processes_matching,
    run_tool,
    sha256_digest,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def skopeo_inspect(forge: ForgeProcess, reference: str, *flags: str) -> dict:
    """`skopeo inspect` of an image on the registry, parsed."""
    result = run_tool(["skopeo", "inspect", "--tls-verify=false", *flags,
                       f"docker://{forge.registry}/{reference}"])
    return json.loads(result.stdout)


def test_v2_root_answers(shared_forge: ForgeProcess) -> None:
    """/v2/ says 200 with the distribution API version header."""
    response = shared_forge.get("/v2/")
    assert response.status == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


def test_skopeo_inspect_by_tag(shared_forge: ForgeProcess, flake_ref: str) -> None:
    """skopeo inspects hello:latest; its config runs hello's bin/hello."""
    image = skopeo_inspect(shared_forge, "hello:latest")
    assert image["Digest"].startswith("sha256:")
    assert len(image["Layers"]) == 1
    config = skopeo_inspect(shared_forge, "hello:latest", "--config")
    command = config["config"].get("Entrypoint") or config["config"]["Cmd"]
    assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-hello/bin/hello", command[0])
    assert any(env.startswith("PATH=") for env in config["config"]["Env"])


def test_skopeo_copy_to_oci_layout(shared_forge: ForgeProcess, tmp_path: Path) -> None:
    """skopeo copy (it verifies every digest and size) gives an OCI layout whose layer holds hello."""
    layout = tmp_path / "layout"
    run_tool(["skopeo", "copy", "--src-tls-verify=false",
              f"docker://{shared_forge.registry}/hello:latest", f"oci:{layout}:hello"])
    assert json.loads((layout / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    index = json.loads((layout / "index.json").read_text())
    [entry] = index["manifests"]
    manifest_bytes = (layout / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")).read_bytes()
    assert sha256_digest(manifest_bytes) == entry["digest"]
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == OCI_MANIFEST
    [layer] = manifest["layers"]
    assert layer["mediaType"] == OCI_LAYER
    blob = (layout / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")).read_bytes()
    assert len(blob) == layer["size"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        names = tar.getnames()
    assert any(re.fullmatch(r"(\./)?nix/store/[a-z0-9]{32}-hello/bin/hello", name) for name in names)


def test_head_by_tag_then_get_by_digest(shared_forge: ForgeProcess) -> None:
    """HEAD by tag gives digest and length; GET by that digest gives exactly those bytes."""
    head = shared_forge.get("/v2/hello/manifests/latest", {"Accept": OCI_ACCEPT}, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    digest = head.headers["docker-content-digest"]
    length = int(head.headers["content-length"])
    response = shared_forge.manifest("hello", digest)
    assert sha256_digest(response.body) == digest
    assert len(response.body) == length
    assert response.headers["docker-content-digest"] == digest
    assert response.headers["content-type"] == OCI_MANIFEST
    assert json.loads(response.body)["mediaType"] == OCI_MANIFEST
    etag = response.headers["etag"]
    assert digest in etag
    cached = shared_forge.get(f"/v2/hello/manifests/{digest}", {"Accept": OCI_ACCEPT, "If-None-Match": etag})
    assert cached.status == 304


def test_writes_are_unsupported(shared_forge: ForgeProcess) -> None:
    """Pushes are refused with 405 UNSUPPORTED."""
    response = shared_forge.get("/v2/hello/blobs/uploads/", method="POST")
    assert response.status == 405
    assert response.error_codes() == ["UNSUPPORTED"]


def test_docker_accept_gets_schema2_with_its_own_digest(shared_forge: ForgeProcess) -> None:
    """Docker-only Accept → schema2 with Docker media types; both forms resolve by their own digest."""
    oci = shared_forge.manifest("hello", accept=OCI_ACCEPT)
    docker = shared_forge.manifest("hello", accept=DOCKER_ACCEPT)
    docker_manifest = docker.json()
    assert docker.headers["content-type"] == DOCKER_MANIFEST
    assert docker_manifest["mediaType"] == DOCKER_MANIFEST
    assert {layer["mediaType"] for layer in docker_manifest["layers"]} == {DOCKER_LAYER}
    docker_digest = docker.headers["docker-content-digest"]
    oci_digest = oci.headers["docker-content-digest"]
    assert docker_digest == sha256_digest(docker.body) != oci_digest == sha256_digest(oci.body)
    # Same blobs under both forms.
    assert [layer["digest"] for layer in docker_manifest["layers"]] == [
        layer["digest"] for layer in oci.json()["layers"]
    ]
    assert docker_manifest["config"]["digest"] == oci.json()["config"]["digest"]
    again = shared_forge.manifest("hello", docker_digest, accept=DOCKER_ACCEPT)
    assert again.body == docker.body
    assert shared_forge.manifest("hello", oci_digest, accept=OCI_ACCEPT).body == oci.body
    preferred = shared_forge.manifest(
        "hello", accept=f"{OCI_MANIFEST};q=0.5, {DOCKER_MANIFEST};q=0.9"
    )
    assert preferred.body == docker.body
    assert shared_forge.get("/v2/hello/manifests/latest").headers["content-type"] == OCI_MANIFEST


def test_blob_range_request(shared_forge: ForgeProcess) -> None:
    """A single Range on a layer blob → 206 with the same bytes as the whole blob's slice; beyond → 416."""
    manifest = shared_forge.manifest("hello").json()
    digest = manifest["layers"][0]["digest"]
    whole = shared_forge.blob("hello", digest)
    partial = shared_forge.get(f"/v2/hello/blobs/{digest}", {"Range": "bytes=100-1099"})
    assert partial.status == 206
    assert partial.body == whole[100:1100]
    assert partial.headers["content-range"] == f"bytes 100-1099/{len(whole)}"
    beyond = shared_forge.get(f"/v2/hello/blobs/{digest}", {"Range": f"bytes={len(whole) + 10}-"})
    assert beyond.status == 416
    assert beyond.headers["content-range"] == f"bytes */{len(whole)}"


def test_tags_list(shared_forge: ForgeProcess) -> None:
    """skopeo list-tags sees `latest` once hello has been pulled."""
    shared_forge.manifest("hello")
    result = run_tool(["skopeo", "list-tags", "--tls-verify=false", f"docker://{shared_forge.registry}/hello"])
    assert "latest" in json.loads(result.stdout)["Tags"]


def test_application_image(shared_forge: ForgeProcess) -> None:
    """applications/app1/web → app1.containers' web.tar.gz, whose config runs web."""
    config = skopeo_inspect(shared_forge, "applications/app1/web:latest", "--config")
    command = config["config"].get("Entrypoint") or config["config"]["Cmd"]
    assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-web/bin/web", command[0])
    db = skopeo_inspect(shared_forge, "applications/app1/db:latest")
    assert db["Digest"] != skopeo_inspect(shared_forge, "applications/app1/web:latest")["Digest"]


def test_unknown_package_is_name_unknown(shared_forge: ForgeProcess) -> None:
    """A package the flake lacks → 404 NAME_UNKNOWN."""
    response = shared_forge.get("/v2/no-such-package/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 404
    assert response.error_codes() == ["NAME_UNKNOWN"]


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/Hello/manifests/latest", "NAME_INVALID"),
        ("/v2/hello--/manifests/latest", "NAME_INVALID"),
        ("/v2/" + "a" * 300 + "/manifests/latest", "NAME_INVALID"),
        ("/v2/hello/manifests/sha256:1234", "DIGEST_INVALID"),
    ],
)
def test_invalid_reference_is_400_without_build(shared_forge: ForgeProcess, path: str, code: str) -> None:
    """Bad names, tags and digests → 400 with the right code, and no build starts."""
    builds = len(shared_forge.matching_lines(BUILD_STARTED))
    response = shared_forge.get(path, {"Accept": OCI_ACCEPT})
    assert response.status == 400, (response.status, response.body)
    assert response.error_codes() == [code]
    assert len(shared_forge.matching_lines(BUILD_STARTED)) == builds


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/hello/manifests/-notatag", "MANIFEST_UNKNOWN"),
        ("/v2/hello/manifests/.INVALID_MANIFEST_NAME", "MANIFEST_UNKNOWN"),
        ("/v2/hello/manifests/" + "t" * 129, "MANIFEST_UNKNOWN"),
        ("/v2/packages/manifests/latest", "NAME_UNKNOWN"),
        ("/v2/applications/manifests/latest", "NAME_UNKNOWN"),
        ("/v2/packages/x/y/manifests/latest", "NAME_UNKNOWN"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_what_names_no_image_is_404_without_nix(shared_forge: ForgeProcess, path: str, code: str,
                                                 method: str) -> None:
    """A reference that is no tag or digest, a name that can't be a package: 404, and no Nix run."""
    shared_forge.sync_log()
    runs = len(shared_forge.matching_lines(NIX_RUN))
    response = shared_forge.get(path, {"Accept": OCI_ACCEPT}, method=method)
    assert response.status == 404, (response.status, response.body)
    if method == "GET":
        assert response.error_codes() == [code]
        assert response.json()["errors"][0]["detail"]
    shared_forge.sync_log()
    assert len(shared_forge.matching_lines(NIX_RUN)) == runs


def test_an_attribute_that_is_no_derivation_is_404_without_a_probe(shared_forge: ForgeProcess) -> None:
    """`packages/packages` names no attribute the catalog lists: 404 with no probe of it, and no build."""
    shared_forge.sync_log()
    runs = len(shared_forge.matching_lines(NIX_RUN))
    for _ in range(3):
        response = shared_forge.get("/v2/packages/packages/manifests/latest", {"Accept": OCI_ACCEPT})
        assert response.status == 404, (response.status, response.body)
        assert response.error_codes() == ["NAME_UNKNOWN"]
    # At most the flake's lock and its catalog (if no pull needed them before), never a probe or build.
    shared_forge.sync_log()
    new_runs = shared_forge.matching_lines(NIX_RUN)[runs:]
    assert len(new_runs) <= 2, new_runs
    for line in new_runs:
        words = line.split("running ", 1)[1].split()
        assert words[1] in ("flake", "eval"), new_runs
        if words[1] == "eval":
            assert words[-1].endswith("#packages.x86_64-linux"), new_runs  # the catalog, not a probe


def test_concurrent_pulls_share_one_build(forge: ForgeProcess) -> None:
    """Five concurrent pulls of an image not built yet: same digest for all, exactly one build."""
    def pull(_: int) -> tuple[int, str]:
        response = http_request(forge.url("/v2/fresh/manifests/latest"), headers={"Accept": OCI_ACCEPT})
        return response.status, response.headers.get("docker-content-digest", "")

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(pull, range(5)))
    assert [status for status, _ in results] == [200] * 5, forge.log_tail()
    assert len({digest for _, digest in results}) == 1
    assert len(forge.matching_lines(BUILD_STARTED)) == 1, forge.matching_lines(BUILD_STARTED)
    # Served from the store now: no further build.
    forge.manifest("fresh")
    assert len(forge.matching_lines(BUILD_STARTED)) == 1


def test_disconnected_client_does_not_cancel_the_build(forge: ForgeProcess) -> None:
    """The first client hangs up mid-build; the build goes on and the next pull shares it."""
    with socket.create_connection(("127.0.0.1", forge.port), timeout=30) as first:
        first.sendall(
            f"GET /v2/fresh-b/manifests/latest HTTP/1.1\r\nHost: {forge.registry}\r\n"
            f"Accept: {OCI_ACCEPT}\r\n\r\n".encode()
        )
        forge.wait_for(BUILD_STARTED, timeout=60)
    response = forge.manifest("fresh-b")
    assert response.json()["mediaType"] == OCI_MANIFEST
    assert len(forge.matching_lines(BUILD_STARTED)) == 1, forge.log_tail()
    assert forge.matching_lines(re.compile(r"build failed")) == []


def test_build_timeout_is_504_and_leaves_no_process(forge_factory: ForgeFactory, nonce: str) -> None:
    """--build-timeout 3 on a 120 s build → 504 quickly, and no builder process is left running."""
    forge = forge_factory(build_timeout=3)
    marker = f"nixforge-slow-{nonce}"
    started = time.monotonic()
    response = forge.get("/v2/slow/manifests/latest", {"Accept": OCI_ACCEPT})
    elapsed = time.monotonic() - started
    assert response.status == 504, (response.status, response.body, forge.log_tail())
    assert elapsed < 20
    # The log tail says what happened; Nix's "interrupted by the user" (our TERM) would mislead.
    tail = response.json()["errors"][0]["detail"]["log"]
    assert tail[-1] == "killed after the 3 s build timeout", tail
    assert "interrupted by the user" not in response.body.decode()
    assert wait_until(lambda: not processes_matching(marker), timeout=10), processes_matching(marker)


@pytest.mark.parametrize("name", ["broken", "nobuild"])
def test_failed_build_reports_the_log(shared_forge: ForgeProcess, name: str) -> None:
    """A failing build → 500 whose detail carries the builder's last lines."""
    response = shared_forge.get(f"/v2/{name}/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 500, (response.status, response.body)
    [error] = response.json()["errors"]
    assert "deliberate failure" in json.dumps(error.get("detail"), ensure_ascii=False)


def test_debug_log_streams_build_output(forge: ForgeProcess) -> None:
    """At DEBUG the builder's lines (braces included) are logged, in order."""
    forge.manifest("chatty")
    lines = forge.matching_lines(re.compile(r"nixforge-chatty line \d \{braces\} %s"))
    numbers = [int(re.search(r"line (\d)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert numbers == [1, 2, 3, 4, 5], forge.log_tail(60)
    assert len(forge.matching_lines(re.compile(r"nixforge-chatty stderr \d"))) == 5


def test_restart_serves_from_the_store(forge_factory: ForgeFactory, tmp_path: Path) -> None:
    """After a restart on the same data dir, with a flake that is now empty, hello is still served."""
    forge = forge_factory("restart")
    first = forge.manifest("hello")
    digest = first.headers["docker-content-digest"]
    assert forge.stop() in CLEAN_EXIT, forge.log_tail()
    empty = tmp_path / "empty-flake"
    empty.mkdir()
    forge.restart(flake_ref=f"path:{empty}")
    again = forge.manifest("hello")
    assert again.body == first.body
    assert again.headers["docker-content-digest"] == digest
    for layer in again.json()["layers"]:
        forge.blob("hello", layer["digest"])
    assert forge.matching_lines(BUILD_STARTED) == []


def test_sigterm_stops_cleanly(forge: ForgeProcess) -> None:
    """SIGTERM ends twistd cleanly: the usual status, a shutdown logged, no traceback."""
    forge.manifest("hello")
    assert forge.stop() in CLEAN_EXIT, forge.log_tail()
    log = forge.log_text()
    assert "Server Shut Down." in log
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_podman_pull_and_run(shared_forge: ForgeProcess, podman: Podman) -> None:
    """podman pulls hello:latest from nixforge and runs it."""
    image = f"{shared_forge.registry}/hello:latest"
    podman("pull", "--tls-verify=false", image)
    assert podman.run_image(image) == "Hello from nixforge\n"


def test_forge_tac_runs_from_the_environment(forge_factory: ForgeFactory) -> None:
    """`twistd -n -y forge.tac`, configured only by environment variables, serves hello."""
    forge = forge_factory("tac", tac=REPO / "forge.tac")
    assert "nixforge" not in forge.argv()
    manifest = forge.manifest("hello").json()
    assert manifest["mediaType"] == OCI_MANIFEST


@pytest.mark.parametrize(
    "option",
    [
        ["--port", "tcp:notaport"],
        ["--port", "ssl:0:interface=127.0.0.1:privateKey=/nonexistent.pem:certKey=/nonexistent.pem"],
        ["--port", "tcp:0:interface=nosuchhost.invalid"],
        ["--build-timeout", "-3"],
        ["--log-level", "LOUD"],
    ],
)
def test_bad_setting_stops_start_up(option: list[str], tmp_path: Path, flake_ref: str) -> None:
    """A bad value ends start-up with a short error and a non-zero status, before anything listens."""
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=tmp_path / "data", work_dir=tmp_path, extra_args=option)
    result = run_tool(forge.argv(), timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "listening on" not in output
    assert "Traceback" not in output, output


def test_an_image_script_is_streamed_into_the_store(shared_forge: ForgeProcess) -> None:
    """`streamed.image` is a streamLayeredImage-style script: its stdout archive becomes the image."""
    streamed = shared_forge.manifest("streamed").json()
    hello = shared_forge.manifest("hello").json()
    assert [layer["digest"] for layer in streamed["layers"]] == [layer["digest"] for layer in hello["layers"]]
    inspected = skopeo_inspect(shared_forge, "streamed:latest")
    assert inspected["Layers"] == [layer["digest"] for layer in hello["layers"]]


def test_a_slow_image_script_times_out_and_is_killed(forge_factory: ForgeFactory) -> None:
    """The build timeout covers the image script too: 504, and the script is gone."""
    forge = forge_factory(build_timeout=3)
    started = time.monotonic()
    response = forge.get("/v2/slowstream/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 504, (response.status, response.body, forge.log_tail())
    assert time.monotonic() - started < 20
    assert wait_until(lambda: not processes_matching("stream-slowstream"), timeout=10)
