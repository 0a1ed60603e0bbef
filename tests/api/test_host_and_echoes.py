"""Malformed Host headers get a JSON 400 (never werkzeug's HTML 500); error answers echo the request's own
path and the registry's own text unredacted, while host paths and credentials still go. Real Site, loopback TCP."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from nixforge.api import RegistryApi
from nixforge.errors import BuildFailed, NameUnknown
from nixforge.images.targets import target_for

from .fake_images import FakeImageService
from .recording_site import RecordingSite
from .test_site import exchange, split_response


@pytest.fixture
def site(images: FakeImageService):
    images.add_image("hello", "latest")
    site = RecordingSite(RegistryApi(images, reactor).resource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    site.port_number = port.getHost().port
    yield site
    port.stopListening()


def raw(path: str, host_lines: list[bytes], version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + path.encode() + b" " + version + b"\r\n" + b"".join(host_lines) + b"Connection: close\r\n\r\n"


async def answer(site: RecordingSite, request: bytes) -> tuple[int, dict[str, str], bytes]:
    _, data = await exchange(site, request)
    status, headers, body = split_response(data)
    return int(status.split(" ")[1]), headers, body


def error_of(headers: dict[str, str], body: bytes) -> dict:
    assert headers["content-type"] == "application/json"
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    [error] = json.loads(body)["errors"]
    return error


@pytest.mark.parametrize("host_lines", [
    [],  # HTTP/1.1 needs a Host
    [b"Host: a\r\n", b"Host: b\r\n"],
    [b"Host: .example\r\n"],
    [b"Host: a..b\r\n"],
    [b"Host: " + b"x" * 64 + b".example\r\n"],
    [b"Host: " + b"x" * 4000 + b"\r\n"],
    [b"Host: a b\r\n"],
    [b"Host: a\tb\r\n"],
    ["Host: é.example\r\n".encode()],
    [b"Host: \xff\xfe\r\n"],
    [b"Host: [::1\r\n"],
    [b"Host: [nope]:80\r\n"],
    [b"Host: example.com:http\r\n"],
], ids=["missing", "repeated", "dot-first", "empty-label", "long-label", "over-long", "space", "tab",
        "non-ascii", "non-utf8", "open-bracket", "bad-literal", "bad-port"])
@pytest.mark.parametrize("path", ["/v2/", "/v2/hello/manifests/latest", "/"])
@pytest_twisted.ensureDeferred
async def test_a_malformed_host_is_a_json_400(site: RecordingSite, images: FakeImageService, failures: list[dict],
                                              host_lines: list[bytes], path: str) -> None:
    status, headers, body = await answer(site, raw(path, host_lines))
    assert status == 400, body[:300]
    error = error_of(headers, body)
    assert error["code"] == "UNSUPPORTED" and error["detail"] == {"header": "Host"}
    assert "Host" in error["message"]
    assert images.calls == []
    assert failures == []


@pytest.mark.parametrize("host_lines, version", [
    ([b"Host: registry.example:5000\r\n"], b"HTTP/1.1"),
    ([b"Host: \r\n"], b"HTTP/1.1"),  # empty: a target without authority
    ([b"Host: [::1]:5000\r\n"], b"HTTP/1.1"),
    ([b"Host: [2001:db8::1]\r\n"], b"HTTP/1.1"),
    ([b"Host: 127.0.0.1\r\n"], b"HTTP/1.1"),
    ([b"Host: xn--nxasmq6b.example\r\n"], b"HTTP/1.1"),
    ([], b"HTTP/1.0"),
])
@pytest_twisted.ensureDeferred
async def test_a_valid_host_is_served(site: RecordingSite, host_lines: list[bytes], version: bytes) -> None:
    status, _, body = await answer(site, raw("/v2/", host_lines, version))
    assert (status, body) == (200, b"{}")


@pytest.mark.parametrize("path", ["/etc/passwd", "/home/me/.docker/config.json", "/nothing/here", "/v3/x"])
@pytest_twisted.ensureDeferred
async def test_the_request_path_is_echoed_as_it_is(site: RecordingSite, path: str) -> None:
    status, headers, body = await answer(site, raw(path, [b"Host: r\r\n"]))
    assert status == 404
    assert error_of(headers, body)["detail"] == {"path": path}



@pytest_twisted.ensureDeferred
async def test_the_start_page_when_the_pages_are_off_says_so(site: RecordingSite) -> None:
    status, headers, body = await answer(site, raw("/", [b"Host: r\r\n"]))
    assert status == 404
    assert "the web pages are off" in error_of(headers, body)["message"]


@pytest_twisted.ensureDeferred
async def test_the_name_unknown_hint_comes_out_whole(site: RecordingSite, images: FakeImageService) -> None:
    with pytest.raises(NameUnknown) as raised:
        target_for("zz/x")  # the registry's own words: the hint of a name that maps to no flake attribute
    images.failures["resolve_tag"] = raised.value
    status, headers, body = await answer(site, raw("/v2/zz/x/manifests/latest", [b"Host: r\r\n"]))
    assert status == 404
    error = error_of(headers, body)
    assert error["code"] == "NAME_UNKNOWN"
    assert error["detail"]["hint"] == "use <pkg>, packages/<pkg> or applications/<app>/<image>"


@pytest_twisted.ensureDeferred
async def test_host_paths_and_credentials_in_an_error_still_go(site: RecordingSite, images: FakeImageService) -> None:
    images.failures["resolve_tag"] = BuildFailed(
        "nix build failed: see /srv/flakes/app/flake.nix and /-/builds/abc123/log",
        {"log": ["error: cannot read /home/me/.netrc", "fetching https://me:token@git.example/r?key=1",
                 "building /nix/store/abc-hello"], "flake": "path:/srv/flakes/app"})
    status, headers, body = await answer(site, raw("/v2/hello/manifests/v1", [b"Host: r\r\n"]))
    assert status == 500
    error = error_of(headers, body)
    assert error["message"] == "build failed: nix build failed: see <host path> and /-/builds/abc123/log"
    assert error["detail"] == {
        "log": ["error: cannot read <host path>", "fetching https://<credentials>@git.example/r",
                "building /nix/store/abc-hello"],
        "flake": "path:<host path>",
    }
