"""Error answers leak no host path, credential, flake query or OSError text; the log tail can be turned off."""

from __future__ import annotations

import errno
import json

import pytest
from twisted.internet.task import Clock

from nixforge.api import RegistryApi
from nixforge.errors import BuildFailed, ManifestUnknown, NameUnknown

from .fake_images import FakeImageService, StubClient

SECRET_FLAKE = "git+https://deploy:hunter2@git.example/team/flake?ref=main&access_token=tok123"
LOG_TAIL = [
    "error: builder for '/nix/store/abc-hello.drv' failed",
    "hello> cannot open /srv/nixforge/private/key.pem",
    f"fetching {SECRET_FLAKE}",
]
SECRETS = ("hunter2", "deploy", "tok123", "access_token", "/srv/", "/var/lib/nixforge")


def client_for(images: FakeImageService, clock: Clock, log_tail: bool = True) -> StubClient:
    return StubClient(RegistryApi(images, clock, error_log_tail=log_tail).resource(), clock)


@pytest.mark.parametrize("error", [
    BuildFailed("nix build failed", {"flake": SECRET_FLAKE, "log": LOG_TAIL}),
    NameUnknown("the flake has no such package", {"name": "hello", "flake": "path:/srv/nixforge/flake"}),
    ManifestUnknown("no such tag in the flake", {"tag": "v9", "flake": SECRET_FLAKE}),
    BuildFailed("cannot assemble the image from the closure",
                {"error": str(OSError(errno.ENOENT, "No such file or directory", "/var/lib/nixforge/layers/x"))}),
])
def test_no_error_answer_carries_a_secret(images: FakeImageService, clock: Clock, error: Exception) -> None:
    images.failures["resolve_tag"] = error
    response, body = client_for(images, clock).request("GET", "/v2/hello/manifests/latest")
    assert response.code in (404, 500)
    text = body.decode()
    for secret in SECRETS:
        assert secret not in text, (secret, text)
    assert json.loads(body)["errors"][0]["message"]


def test_the_build_log_tail_is_kept_scrubbed(images: FakeImageService, clock: Clock) -> None:
    images.failures["resolve_tag"] = BuildFailed("nix build failed", {"log": LOG_TAIL})
    _, body = client_for(images, clock).request("GET", "/v2/hello/manifests/latest")
    assert json.loads(body)["errors"][0]["detail"]["log"] == [
        "error: builder for '/nix/store/abc-hello.drv' failed",
        "hello> cannot open <host path>",
        "fetching git+https://<credentials>@git.example/team/flake",
    ]


def test_the_log_tail_can_be_left_out(images: FakeImageService, clock: Clock) -> None:
    images.failures["resolve_tag"] = BuildFailed("nix build failed", {"log": LOG_TAIL, "flake": "github:o/r"})
    response, body = client_for(images, clock, log_tail=False).request("GET", "/v2/hello/manifests/latest")
    assert response.code == 500
    assert json.loads(body)["errors"][0]["detail"] == {"flake": "github:o/r"}


@pytest.mark.parametrize("path", ["/v2/%ff/manifests/latest", "/v2/hello/manifests/%C3%28", "/%fe", "/v2/a/blobs/%80"])
def test_paths_klein_cannot_decode_get_json(images: FakeImageService, clock: Clock, path: str) -> None:
    response, body = client_for(images, clock).request("GET", path)
    assert response.code == 400
    assert response.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"
    assert images.calls == []


@pytest.mark.parametrize("path, status, code", [
    ("/v2/hello/manifests/a%0Ab", 404, "MANIFEST_UNKNOWN"),
    ("/v2/he%0Allo/manifests/latest", 400, "NAME_INVALID"),
    ("/v2//manifests/latest", 404, "UNSUPPORTED"),
    ("/v2//hello/manifests/latest", 400, "NAME_INVALID"),
])
def test_paths_werkzeug_does_not_route_get_json(images: FakeImageService, clock: Clock, path: str, status: int,
                                                code: str) -> None:
    response, body = client_for(images, clock).request("GET", path)
    assert (response.code, json.loads(body)["errors"][0]["code"]) == (status, code)
    assert response.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert images.calls == []
