"""Routes, negotiation, validation and error mapping of RegistryApi, over an in-memory HTTP connection."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from zope.interface.verify import verifyObject

import nixforge.api.app as app_module
from nixforge.api import RegistryApi
from nixforge.errors import BuildFailed, BuildInProgress, BuildTimedOut, NameUnknown, StoreFull, TooManyBuilds
from nixforge.images.interfaces import IImageService
from nixforge.oci import media_types as mt
from nixforge.oci.documents import ImageManifests, sha256_digest
from nixforge.oci.image_index import build_index, platform_for
from nixforge.oci.referrers import sbom_artifact

from .fake_images import FakeImageService, StubClient

OCI_ACCEPT = {"Accept": [mt.OCI_MANIFEST]}
DOCKER_ACCEPT = {"Accept": [mt.DOCKER_MANIFEST]}
ZERO_DIGEST = "sha256:" + "0" * 64


@pytest.fixture
def client(images: FakeImageService, clock: Clock) -> StubClient:
    api = RegistryApi(images, clock, max_name_length=40, max_tag_length=16)
    return StubClient(api.resource(), clock)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    captured: list[dict] = []
    monkeypatch.setattr(app_module, "log", Logger(observer=captured.append))
    return captured


def header(response: object, name: str) -> str | None:
    """One response header; Content-Length comes from `length` (the client consumes that header on GET)."""
    values = response.headers.getRawHeaders(name)  # type: ignore[attr-defined]
    if not values and name == "Content-Length":
        length = response.length  # type: ignore[attr-defined]
        return None if not isinstance(length, int) else str(length)
    return values[0] if values else None


def error_of(response: object, body: bytes) -> dict:
    assert header(response, "Content-Type") == "application/json"
    errors = json.loads(body)["errors"]
    assert len(errors) == 1
    assert set(errors[0]) == {"code", "message", "detail"}
    return errors[0]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_base(client: StubClient, method: str) -> None:
    response, body = client.request(method, "/v2/")
    assert response.code == 200
    assert header(response, "Docker-Distribution-API-Version") == "registry/2.0"
    assert header(response, "Content-Type") == "application/json"
    assert header(response, "Content-Length") == "2"
    assert body == (b"{}" if method == "GET" else b"")


def test_manifest_by_tag_defaults_to_oci(client: StubClient, images: FakeImageService) -> None:
    manifests = images.add_image("hello", "latest")
    response, body = client.request("GET", "/v2/hello/manifests/latest")
    assert response.code == 200
    assert body == manifests.oci.body
    assert header(response, "Content-Type") == mt.OCI_MANIFEST
    assert header(response, "Docker-Content-Digest") == manifests.oci.digest
    assert header(response, "ETag") == f'"{manifests.oci.digest}"'
    assert header(response, "Content-Length") == str(len(body))
    assert images.calls == [("resolve_tag", "hello", "latest")]


@pytest.mark.parametrize(
    ("accept", "form"),
    [
        ([mt.DOCKER_MANIFEST], "docker"),
        ([mt.OCI_MANIFEST], "oci"),
        ([mt.DOCKER_MANIFEST, mt.OCI_MANIFEST], "oci"),
        ([f"{mt.DOCKER_MANIFEST}, {mt.OCI_MANIFEST}"], "oci"),
        ([f"{mt.OCI_MANIFEST};q=0.5, {mt.DOCKER_MANIFEST}"], "docker"),
        ([f"{mt.OCI_MANIFEST};q=0, */*"], "docker"),
        (["application/vnd.docker.distribution.manifest.v1+prettyjws"], "oci"),
        (["*/*"], "oci"),
    ],
)
def test_manifest_by_tag_negotiates(client: StubClient, images: FakeImageService, accept: list[str], form: str) -> None:
    manifests = images.add_image("hello", "latest")
    expected = getattr(manifests, form)
    response, body = client.request("GET", "/v2/hello/manifests/latest", {"Accept": accept})
    assert response.code == 200
    assert body == expected.body
    assert header(response, "Content-Type") == expected.media_type
    assert header(response, "Docker-Content-Digest") == expected.digest
    assert header(response, "Vary") == "Accept"


@pytest.mark.parametrize("form", ["oci", "docker"])
@pytest.mark.parametrize("accept", [OCI_ACCEPT, DOCKER_ACCEPT, None])
def test_manifest_by_digest_is_served_as_stored(
    client: StubClient, images: FakeImageService, form: str, accept: dict | None
) -> None:
    document = getattr(images.add_image("hello", "latest"), form)
    response, body = client.request("GET", f"/v2/hello/manifests/{document.digest}", accept)
    assert response.code == 200
    assert body == document.body
    assert "sha256:" + hashlib.sha256(body).hexdigest() == document.digest
    assert header(response, "Content-Type") == document.media_type
    assert header(response, "Docker-Content-Digest") == document.digest
    assert images.calls == [("manifest_by_digest", "hello", document.digest)]


@pytest.mark.parametrize("accept", [OCI_ACCEPT, DOCKER_ACCEPT])
def test_head_by_tag_then_get_by_digest_agree(client: StubClient, images: FakeImageService, accept: dict) -> None:
    images.add_image("apps/web", "v1")
    head, head_body = client.request("HEAD", "/v2/apps/web/manifests/v1", accept)
    assert head.code == 200
    assert head_body == b""
    digest = header(head, "Docker-Content-Digest")
    length = int(header(head, "Content-Length") or "0")
    assert length > 0
    response, body = client.request("GET", f"/v2/apps/web/manifests/{digest}")
    assert len(body) == length
    assert header(response, "Content-Type") == header(head, "Content-Type")
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest


def test_name_with_reserved_words_as_components(client: StubClient, images: FakeImageService) -> None:
    manifests = images.add_image("a/manifests/blobs/tags", "list")
    response, body = client.request("GET", "/v2/a/manifests/blobs/tags/manifests/list")
    assert response.code == 200
    assert body == manifests.oci.body
    response, body = client.request("GET", "/v2/a/manifests/blobs/tags/tags/list")
    assert json.loads(body) == {"name": "a/manifests/blobs/tags", "tags": ["list"]}


@pytest.mark.parametrize(
    "if_none_match",
    ['"{d}"', "{d}", 'W/"{d}"', '"sha256:other", "{d}"', "*"],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_manifest_not_modified(client: StubClient, images: FakeImageService, if_none_match: str, method: str) -> None:
    digest = images.add_image("hello", "latest").oci.digest
    response, body = client.request(
        method, "/v2/hello/manifests/latest", {"If-None-Match": [if_none_match.format(d=digest)]}
    )
    assert response.code == 304
    assert body == b""
    assert header(response, "ETag") == f'"{digest}"'
    assert header(response, "Docker-Distribution-API-Version") == "registry/2.0"


def test_manifest_modified(client: StubClient, images: FakeImageService) -> None:
    manifests = images.add_image("hello", "latest")
    response, body = client.request(
        "GET", "/v2/hello/manifests/latest", {"If-None-Match": [f'"{manifests.docker.digest}"']}
    )
    assert response.code == 200
    assert body == manifests.oci.body


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/nope/manifests/latest", "NAME_UNKNOWN"),
        ("/v2/hello/manifests/v9", "MANIFEST_UNKNOWN"),
        (f"/v2/hello/manifests/{ZERO_DIGEST}", "MANIFEST_UNKNOWN"),
        (f"/v2/hello/blobs/{ZERO_DIGEST}", "BLOB_UNKNOWN"),
        ("/v2/nope/tags/list", "NAME_UNKNOWN"),
    ],
)
def test_unknown_things_are_404(client: StubClient, images: FakeImageService, path: str, code: str) -> None:
    images.add_image("hello", "latest")
    response, body = client.request("GET", path)
    assert response.code == 404
    assert error_of(response, body)["code"] == code


@pytest.mark.parametrize("reference", ["-bad", ".INVALID_MANIFEST_NAME", "t" * 17, "BAD!"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_reference_neither_tag_nor_digest_is_an_unknown_manifest(
    client: StubClient, images: FakeImageService, reference: str, method: str
) -> None:
    # The conformance suite asks for 404 here; nothing is built for it.
    response, body = client.request(method, f"/v2/hello/manifests/{reference}")
    assert response.code == 404
    if method == "GET":
        error = error_of(response, body)
        assert error["code"] == "MANIFEST_UNKNOWN"
        assert "neither a valid tag nor a digest" in error["message"]
        assert "a tag matches" in error["detail"]["reason"]
    assert images.calls == []


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/Hello/manifests/latest", "NAME_INVALID"),
        ("/v2/hello-/manifests/latest", "NAME_INVALID"),
        ("/v2/" + "a" * 41 + "/manifests/latest", "NAME_INVALID"),
        ("/v2/" + "/".join(["abcdefghi"] * 5) + "/manifests/latest", "NAME_INVALID"),
        ("/v2/" + "a" * 41 + "/blobs/" + ZERO_DIGEST, "NAME_INVALID"),
        ("/v2/" + "a" * 41 + "/tags/list", "NAME_INVALID"),
        ("/v2/UPPER/referrers/" + ZERO_DIGEST, "NAME_INVALID"),
        ("/v2/hello/manifests/sha256:abc", "DIGEST_INVALID"),
        ("/v2/hello/manifests/md5:" + "0" * 32, "DIGEST_INVALID"),
        ("/v2/hello/blobs/latest", "DIGEST_INVALID"),
        ("/v2/hello/blobs/sha256:" + "A" * 64, "DIGEST_INVALID"),
        ("/v2/hello/referrers/sha256:xyz", "DIGEST_INVALID"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_validation_never_calls_the_service(
    client: StubClient, images: FakeImageService, path: str, code: str, method: str
) -> None:
    response, body = client.request(method, path)
    assert response.code == 400
    if method == "GET":
        assert error_of(response, body)["code"] == code
    else:
        assert body == b""
        assert int(header(response, "Content-Length") or "0") > 0
    assert images.calls == []


def test_limits_are_inclusive(client: StubClient, images: FakeImageService) -> None:
    name, tag = "a" * 40, "t" * 16
    manifests = images.add_image(name, tag)
    response, body = client.request("GET", f"/v2/{name}/manifests/{tag}")
    assert response.code == 200
    assert body == manifests.oci.body


def test_build_failed_is_500_with_log_tail(client: StubClient, images: FakeImageService) -> None:
    images.failures["resolve_tag"] = BuildFailed("nix build failed", "error: builder failed\nline 2")
    response, body = client.request("GET", "/v2/hello/manifests/latest")
    assert response.code == 500
    error = error_of(response, body)
    assert error["code"] == "UNKNOWN"
    assert error["detail"] == "error: builder failed\nline 2"


def test_build_timed_out_is_504(client: StubClient, images: FakeImageService) -> None:
    images.failures["resolve_tag"] = BuildTimedOut("after 600 s", {"timeout": 600})
    response, body = client.request("GET", "/v2/hello/manifests/latest")
    assert response.code == 504
    error = error_of(response, body)
    assert error["code"] == "UNKNOWN"
    assert "timed out" in error["message"]
    assert error["detail"] == {"timeout": 600}


def test_too_many_builds_is_429_with_retry_after(client: StubClient, images: FakeImageService) -> None:
    images.failures["resolve_tag"] = TooManyBuilds("build queue full", retry_after=30)
    response, body = client.request("GET", "/v2/hello/manifests/latest")
    assert response.code == 429
    assert header(response, "Retry-After") == "30"
    assert error_of(response, body)["code"] == "TOOMANYREQUESTS"


def test_store_full_is_503_unavailable_with_retry_after(client: StubClient, images: FakeImageService) -> None:
    images.failures["resolve_tag"] = StoreFull("the blob store is full", retry_after=15)
    response, body = client.request("GET", "/v2/hello/manifests/latest")
    assert response.code == 503
    assert header(response, "Retry-After") == "15"
    error = error_of(response, body)
    assert error["code"] == "UNAVAILABLE"
    assert "full" in error["message"]


def test_unexpected_error_is_500_logged_with_traceback(
    client: StubClient, images: FakeImageService, events: list[dict]
) -> None:
    images.failures["blob"] = ZeroDivisionError("secret internals")
    response, body = client.request("GET", f"/v2/hello/blobs/{ZERO_DIGEST}")
    assert response.code == 500
    error = error_of(response, body)
    assert error["code"] == "UNKNOWN"
    assert b"secret internals" not in body
    assert b"Traceback" not in body
    failures = [event for event in events if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["log_level"] == LogLevel.critical
    assert failures[0]["log_failure"].check(ZeroDivisionError)
    assert "ZeroDivisionError" in failures[0]["log_failure"].getTraceback()


def test_error_responses_are_logged_with_fields(
    client: StubClient, images: FakeImageService, events: list[dict]
) -> None:
    images.failures["tags"] = NameUnknown("no such repo")
    client.request("GET", "/v2/hello/tags/list")
    [event] = [event for event in events if event["log_level"] == LogLevel.info]
    assert event["method"] == "GET"
    assert event["path"] == "/v2/hello/tags/list"
    assert event["code"] == "NAME_UNKNOWN"
    assert event["status"] == 404


def test_cancelled_request_cancels_the_service_wait(
    client: StubClient, images: FakeImageService, events: list[dict]
) -> None:
    cancelled: list[bool] = []
    images.pending["resolve_tag"] = Deferred(lambda _: cancelled.append(True))
    request = client.stub.request("GET", "http://registry.test/v2/hello/manifests/latest")
    client.stub.flush()
    assert images.calls == [("resolve_tag", "hello", "latest")]
    request.cancel()
    client.stub.flush()
    assert cancelled == [True]
    assert [event for event in events if "log_failure" in event] == []


def put_tags(images: FakeImageService, name: str, tags: list[str]) -> None:
    for tag in tags:
        images.add_image(name, tag)


def test_tags_list(client: StubClient, images: FakeImageService) -> None:
    put_tags(images, "hello", ["b", "a", "c"])
    response, body = client.request("GET", "/v2/hello/tags/list")
    assert response.code == 200
    assert header(response, "Content-Type") == "application/json"
    assert json.loads(body) == {"name": "hello", "tags": ["a", "b", "c"]}
    assert header(response, "Link") is None


def test_tags_list_pages_with_link(client: StubClient, images: FakeImageService) -> None:
    put_tags(images, "my/app", ["t1", "t2", "t3", "t4", "t5"])
    response, body = client.request("GET", "/v2/my/app/tags/list?n=2")
    assert json.loads(body)["tags"] == ["t1", "t2"]
    assert header(response, "Link") == '</v2/my/app/tags/list?n=2&last=t2>; rel="next"'
    response, body = client.request("GET", "/v2/my/app/tags/list?n=2&last=t2")
    assert json.loads(body)["tags"] == ["t3", "t4"]
    response, body = client.request("GET", "/v2/my/app/tags/list?n=2&last=t4")
    assert json.loads(body)["tags"] == ["t5"]
    assert header(response, "Link") is None
    response, body = client.request("GET", "/v2/my/app/tags/list?last=t3")
    assert json.loads(body)["tags"] == ["t4", "t5"]


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "%C2%B2"])
@pytest.mark.parametrize("path", ["/v2/hello/tags/list", "/v2/_catalog"])
def test_bad_page_size(client: StubClient, images: FakeImageService, n: str, path: str) -> None:
    put_tags(images, "hello", ["a"])
    response, body = client.request("GET", f"{path}?n={n}")
    assert response.code == 400
    assert error_of(response, body)["code"] == "PAGINATION_NUMBER_INVALID"
    assert images.calls == []


def test_catalog_pages_with_link(client: StubClient, images: FakeImageService) -> None:
    for name in ["b/x", "a", "c"]:
        images.add_image(name, "latest")
    response, body = client.request("GET", "/v2/_catalog")
    assert json.loads(body) == {"repositories": ["a", "b/x", "c"]}
    response, body = client.request("GET", "/v2/_catalog?n=2")
    assert json.loads(body) == {"repositories": ["a", "b/x"]}
    assert header(response, "Link") == '</v2/_catalog?n=2&last=b%2Fx>; rel="next"'
    response, body = client.request("GET", "/v2/_catalog?n=2&last=b%2Fx")
    assert json.loads(body) == {"repositories": ["c"]}
    assert header(response, "Link") is None


def test_referrers_is_an_empty_index(client: StubClient, images: FakeImageService) -> None:
    response, body = client.request("GET", f"/v2/hello/referrers/{ZERO_DIGEST}")
    assert response.code == 200
    assert header(response, "Content-Type") == mt.OCI_INDEX
    assert json.loads(body) == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    assert header(response, "Content-Length") == str(len(body))


def test_referrers_lists_the_sbom_artifacts_of_a_digest(client: StubClient, images: FakeImageService) -> None:
    manifests = images.add_image("hello", "latest")
    sbom = b'{"spdxVersion":"SPDX-2.3"}'
    for subject in (manifests.oci, manifests.docker):
        images.add_referrer("hello", sbom_artifact(subject, sha256_digest(sbom), len(sbom), "2024-01-02T03:04:05Z"))
    response, body = client.request("GET", f"/v2/hello/referrers/{manifests.oci.digest}")
    assert response.code == 200
    assert header(response, "Content-Type") == mt.OCI_INDEX
    assert header(response, "OCI-Filters-Applied") is None
    index = json.loads(body)
    assert index["mediaType"] == mt.OCI_INDEX
    [entry] = index["manifests"]
    assert entry["artifactType"] == mt.SPDX_JSON
    assert entry["annotations"] == {"org.opencontainers.image.created": "2024-01-02T03:04:05Z"}
    assert entry["mediaType"] == mt.OCI_MANIFEST
    response, artifact = client.request("GET", f"/v2/hello/manifests/{entry['digest']}")
    assert sha256_digest(artifact) == entry["digest"] and entry["size"] == len(artifact)
    assert json.loads(artifact)["subject"]["digest"] == manifests.oci.digest
    # The Docker form has its own artifact.
    response, body = client.request("GET", f"/v2/hello/referrers/{manifests.docker.digest}")
    [docker_entry] = json.loads(body)["manifests"]
    assert docker_entry["digest"] != entry["digest"]


@pytest.mark.parametrize("wanted, count", [(mt.SPDX_JSON, 1), ("application/vnd.example+json", 0)])
def test_referrers_filters_by_artifact_type(client: StubClient, images: FakeImageService,
                                            wanted: str, count: int) -> None:
    manifests = images.add_image("hello", "latest")
    images.add_referrer("hello", sbom_artifact(manifests.oci, ZERO_DIGEST, 2, "1970-01-01T00:00:00Z"))
    query = "artifactType=" + quote(wanted, safe="")
    response, body = client.request("GET", f"/v2/hello/referrers/{manifests.oci.digest}?{query}")
    assert header(response, "OCI-Filters-Applied") == "artifactType"
    assert len(json.loads(body)["manifests"]) == count


def _index_of_two(images: FakeImageService) -> tuple[ImageManifests, ImageManifests, ImageManifests]:
    amd = images.add_image("multi", "amd")
    arm = images.add_image("multi", "arm")
    index = build_index([(platform_for("x86_64-linux"), amd), (platform_for("aarch64-linux"), arm)], host=0)
    images.images[("multi", "latest")] = index
    return index, amd, arm


@pytest.mark.parametrize(
    "accept, form",
    [
        ([], "oci-index"),
        ([mt.OCI_INDEX], "oci-index"),
        ([mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST], "docker-list"),
        ([f"{mt.OCI_MANIFEST}, {mt.DOCKER_MANIFEST}"], "host-oci"),
        ([mt.DOCKER_MANIFEST], "host-docker"),
        (["*/*"], "oci-index"),
    ],
)
def test_an_index_tag_follows_accept_and_falls_back_to_the_host_image(
    client: StubClient, images: FakeImageService, accept: list[str], form: str
) -> None:
    index, amd, _ = _index_of_two(images)
    expected = {"oci-index": index.oci, "docker-list": index.docker, "host-oci": amd.oci,
                "host-docker": amd.docker}[form]
    response, body = client.request("GET", "/v2/multi/manifests/latest", {"Accept": accept} if accept else None)
    assert response.code == 200
    assert body == expected.body
    assert header(response, "Content-Type") == expected.media_type
    assert header(response, "Docker-Content-Digest") == expected.digest


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "path",
    [
        "/v2/",
        "/v2/hello/blobs/uploads/",
        "/v2/hello/manifests/latest",
        f"/v2/hello/blobs/{ZERO_DIGEST}",
        "/v2/hello/tags/list",
        "/v2/_catalog",
        "/v2/no/such/endpoint",
    ],
)
def test_writes_are_unsupported(client: StubClient, images: FakeImageService, method: str, path: str) -> None:
    response, body = client.request(method, path)
    assert response.code == 405
    assert header(response, "Allow") == "GET, HEAD"
    assert error_of(response, body)["code"] == "UNSUPPORTED"
    assert images.calls == []


@pytest.mark.parametrize(
    "path",
    [
        "/v2/hello/unknown",
        "/v2/hello/manifests/",
        "/v2/hello/blobs/uploads/",
        "/v2/hello/blobs/uploads/some-uuid",
        "/v2/hello/tags",
        "/v2/_catalog/x",
        "/",
        "/metrics",
    ],
)
def test_unknown_paths_are_json_404(client: StubClient, images: FakeImageService, path: str) -> None:
    response, body = client.request("GET", path)
    assert response.code == 404
    assert error_of(response, body)["code"] == "UNSUPPORTED"
    assert header(response, "Docker-Distribution-API-Version") == "registry/2.0"
    assert images.calls == []


def test_api_version_header_on_every_response_type(client: StubClient, images: FakeImageService) -> None:
    manifests = images.add_image("hello", "latest", [b"0123456789"])
    layer = json.loads(manifests.oci.body)["layers"][0]["digest"]
    images.failures["repositories"] = TooManyBuilds("busy", retry_after=1)
    cases = [
        ("GET", "/v2/", None, 200),
        ("HEAD", "/v2/hello/manifests/latest", None, 200),
        ("GET", f"/v2/hello/blobs/{layer}", {"Range": ["bytes=0-1"]}, 206),
        ("GET", "/v2/hello/manifests/latest", {"If-None-Match": [manifests.oci.digest]}, 304),
        ("GET", "/v2/hello/manifests/sha256:BAD", None, 400),
        ("GET", "/v2/hello/manifests/BAD!", None, 404),
        ("GET", "/v2/nope/manifests/latest", None, 404),
        ("GET", "/nowhere", None, 404),
        ("DELETE", "/v2/hello/manifests/latest", None, 405),
        ("GET", f"/v2/hello/blobs/{layer}", {"Range": ["bytes=50-"]}, 416),
        ("GET", "/v2/_catalog", None, 429),
        ("GET", "/v2", None, None),
    ]
    for method, path, headers, status in cases:
        response, _ = client.request(method, path, headers)
        if status is not None:
            assert response.code == status, (method, path)
        assert header(response, "Docker-Distribution-API-Version") == "registry/2.0", (method, path)


def test_fake_provides_the_interface(images: FakeImageService) -> None:
    assert verifyObject(IImageService, images)


def test_blob_that_cannot_be_opened_is_500(client: StubClient, images: FakeImageService, events: list[dict]) -> None:
    def broken() -> None:
        raise PermissionError("no access to /secret/path")

    digest = images.add_blob("hello", b"data")
    blob = images.blobs[("hello", digest)]
    images.blobs[("hello", digest)] = type(blob)(blob.digest, blob.size, broken)
    response, body = client.request("GET", f"/v2/hello/blobs/{digest}", {"Range": ["bytes=0-1"]})
    assert response.code == 500
    assert b"/secret/path" not in body
    assert header(response, "Content-Range") is None
    assert header(response, "Docker-Content-Digest") is None
    [failure] = [event for event in events if "log_failure" in event]
    assert "broken" in failure["log_failure"].getTraceback()


def test_v2_without_the_slash_answers_json(client: StubClient) -> None:
    response, body = client.request("GET", "/v2")
    assert response.code == 200
    assert json.loads(body) == {}
    assert response.headers.getRawHeaders("Docker-Distribution-API-Version") == ["registry/2.0"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_writes_outside_v2_are_unsupported(client: StubClient, method: str) -> None:
    response, body = client.request(method, "/anything/else")
    assert response.code == 405
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"


def test_a_build_still_running_after_the_pull_wait_is_429_with_its_log(
    client: StubClient, images: FakeImageService
) -> None:
    images.failures["resolve_tag"] = BuildInProgress(
        "hello:latest is still building after 60 s (build b1); retry shortly, or follow its log at /-/builds/b1/log",
        10, {"name": "hello", "tag": "latest", "build": "b1", "build_log": "/-/builds/b1/log"})
    response, body = client.request("GET", "/v2/hello/manifests/latest")
    assert response.code == 429
    assert header(response, "Retry-After") == "10"
    error = error_of(response, body)
    assert error["code"] == "TOOMANYREQUESTS" and "/-/builds/b1/log" in error["message"]
    assert error["detail"] == {"name": "hello", "tag": "latest", "build": "b1", "build_log": "/-/builds/b1/log"}
