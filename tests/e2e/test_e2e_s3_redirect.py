"""Pulls through a replica that never built the image, following its 307 to a presigned SeaweedFS URL."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.e2e_support import (
    DOCKER_ACCEPT,
    ForgeProcess,
    HttpResponse,
    Podman,
    http_request,
    run_tool,
    sha256_digest,
)
from tests.e2e.test_e2e_containerd import Containerd, containerd
from tests.s3_server import SeaweedServer

__all__ = ["containerd"]  # the module's private containerd, reused here

BLOB_REQUEST = re.compile(r"GET /v2/hello/blobs/(?P<digest>sha256:[0-9a-f]{64}) (?P<status>\d{3}) ")
NIX_BUILD = re.compile(r"running \S*nix build ")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def get_without_redirects(url: str) -> HttpResponse:
    """One GET that returns a 3xx instead of following it."""
    opener = urllib.request.build_opener(_NoRedirects())
    try:
        with opener.open(url, timeout=60) as response:
            return HttpResponse(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as error:
        return HttpResponse(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, flake_ref: str,
             s3_server: SeaweedServer) -> Iterator[tuple[ForgeProcess, ForgeProcess, dict[str, str]]]:
    """Replica A builds hello into a fresh bucket; replica B, started afterwards on an empty disk, serves it."""
    bucket = s3_server.create_bucket(f"redirect-{uuid.uuid4().hex[:12]}")
    environment = {**s3_server.environ(), "NIXFORGE_STORE": f"s3://{bucket}"}
    work = tmp_path_factory.mktemp("s3-replicas")
    a = ForgeProcess(flake_ref=flake_ref, data_dir=work / "a" / "data", work_dir=work / "a", extra_env=environment)
    b = ForgeProcess(flake_ref=flake_ref, data_dir=work / "b" / "data", work_dir=work / "b", extra_env=environment)
    a.start()
    try:
        assert a.manifest("hello").status == 200
        b.start()
        try:
            yield a, b, environment
        finally:
            b.stop()
    finally:
        a.stop()


def blob_digests(forge: ForgeProcess) -> list[str]:
    """The config and layer digests of hello:latest (Docker form), from the replica."""
    manifest = forge.manifest("hello", accept=DOCKER_ACCEPT).json()
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def redirected_blobs(forge: ForgeProcess) -> list[tuple[str, int]]:
    """(digest, status) of every blob GET in the replica's access log."""
    forge.sync_log()
    return [(m.group("digest"), int(m.group("status"))) for line in forge.lines
            if (m := BLOB_REQUEST.search(line))]


def no_signature_logged(forge: ForgeProcess) -> None:
    forge.sync_log()
    assert not [line for line in forge.lines if "X-Amz-" in line or "Signature" in line]


def test_skopeo_copy_follows_the_redirect(replicas: tuple[ForgeProcess, ForgeProcess, dict[str, str]],
                                          tmp_path: Path) -> None:
    _, b, _ = replicas
    before = len(redirected_blobs(b))
    run_tool(["skopeo", "copy", "--src-tls-verify=false", f"docker://{b.registry}/hello:latest",
              f"oci:{tmp_path / 'layout'}:latest"], timeout=600)
    fetched = redirected_blobs(b)[before:]
    assert fetched and {status for _, status in fetched} == {307}
    assert b.matching_lines(NIX_BUILD) == []
    no_signature_logged(b)


def test_podman_pull_and_run_through_the_redirect(replicas: tuple[ForgeProcess, ForgeProcess, dict[str, str]],
                                                  podman: Podman) -> None:
    _, b, _ = replicas
    before = len(redirected_blobs(b))
    image = f"{b.registry}/hello:latest"
    podman("pull", "--tls-verify=false", image)
    assert podman.run_image(image) == "Hello from nixforge\n"
    assert {status for _, status in redirected_blobs(b)[before:]} == {307}


def test_ctr_pull_through_the_redirect(replicas: tuple[ForgeProcess, ForgeProcess, dict[str, str]],
                                       containerd: Containerd) -> None:
    _, b, _ = replicas
    before = len(redirected_blobs(b))
    reference = f"{b.registry}/hello:latest"
    containerd.pull(reference)
    assert containerd.image_check(reference)["status"].startswith("complete")
    assert {status for _, status in redirected_blobs(b)[before:]} == {307}


def test_the_store_refuses_a_tampered_url(replicas: tuple[ForgeProcess, ForgeProcess, dict[str, str]]) -> None:
    _, b, _ = replicas
    digest = blob_digests(b)[-1]
    answer = get_without_redirects(b.url(f"/v2/hello/blobs/{digest}"))
    assert answer.status == 307 and answer.headers["docker-content-digest"] == digest
    location = answer.headers["location"]
    assert "X-Amz-Signature=" in location and "Authorization" not in location
    assert sha256_digest(http_request(location).body) == digest
    parts = urllib.parse.urlsplit(location)
    query = urllib.parse.parse_qs(parts.query)
    signature = query["X-Amz-Signature"][0]
    query["X-Amz-Signature"] = [("0" if signature[0] != "0" else "1") + signature[1:]]
    tampered = parts._replace(query=urllib.parse.urlencode(query, doseq=True)).geturl()
    assert http_request(tampered).status == 403
    other_key = location.replace(digest.split(":")[1], blob_digests(b)[0].split(":")[1])
    assert http_request(other_key).status == 403  # a URL signs one object only
    assert b.get(f"/v2/hello/blobs/{digest}", method="HEAD").status == 200  # HEAD: the replica itself


def test_without_redirects_the_replica_streams_with_range(
        replicas: tuple[ForgeProcess, ForgeProcess, dict[str, str]], tmp_path: Path, flake_ref: str) -> None:
    _, _, environment = replicas
    streaming = ForgeProcess(flake_ref=flake_ref, data_dir=tmp_path / "c" / "data", work_dir=tmp_path / "c",
                             extra_env={**environment, "NIXFORGE_S3_REDIRECT": "false"}).start()
    try:
        digest = blob_digests(streaming)[-1]
        whole = streaming.get(f"/v2/hello/blobs/{digest}")
        assert whole.status == 200 and sha256_digest(whole.body) == digest
        part = streaming.get(f"/v2/hello/blobs/{digest}", headers={"Range": "bytes=10-19"})
        assert part.status == 206 and part.body == whole.body[10:20]
        run_tool(["skopeo", "copy", "--src-tls-verify=false", f"docker://{streaming.registry}/hello:latest",
                  f"oci:{tmp_path / 'streamed'}:latest"], timeout=600)  # skopeo checks every digest
        assert {status for _, status in redirected_blobs(streaming)} == {200, 206}  # no 307
        assert streaming.matching_lines(NIX_BUILD) == []
    finally:
        streaming.stop()
