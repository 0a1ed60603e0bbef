"""`POST /-/refresh[/<name>]`: 202 with what was scheduled, 405 for other methods, the client rule."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from nixforge.api import RegistryApi
from nixforge.errors import NameUnknown
from nixforge.refresh_access import RefreshAccess, parse_refresh_from

from .fake_images import FakeImageService, StubClient

GITHUB_PUSH = json.dumps({"ref": "refs/heads/main", "after": "a" * 40, "commits": [{"id": "x" * 40}] * 50}).encode()


def send(client: StubClient, method: str, path: str, body: bytes = b"") -> tuple[object, bytes]:
    response = client.wait(client.stub.request(method, "http://registry.test" + path, data=body or None,
                                               headers={"Content-Type": ["application/json"]}))
    return response, client.wait(client.stub.content(response))


def make_client(images: FakeImageService, clock: Clock, access: RefreshAccess | None = None) -> StubClient:
    return StubClient(RegistryApi(images, clock, refresh_access=access).resource(), clock)


def test_post_refresh_schedules_every_repository_and_ignores_the_webhook_body(
        images: FakeImageService, clock: Clock) -> None:
    images.add_image("hello", "latest")
    images.add_image("tool", "main")
    response, body = send(make_client(images, clock), "POST", "/-/refresh", GITHUB_PUSH)
    assert response.code == 202  # type: ignore[attr-defined]
    assert json.loads(body) == {"repository": None, "scheduled": ["hello:latest", "tool:main"]}
    assert images.calls == [("refresh", "")]


@pytest.mark.parametrize("path", ["/-/refresh/hello", "/-/refresh/packages/hello"])
def test_post_refresh_of_one_repository(images: FakeImageService, clock: Clock, path: str) -> None:
    images.add_image("hello", "latest")
    images.add_image("packages/hello", "latest")
    images.add_image("tool", "latest")
    response, body = send(make_client(images, clock), "POST", path)
    name = path.removeprefix("/-/refresh/")
    assert response.code == 202  # type: ignore[attr-defined]
    assert json.loads(body) == {"repository": name, "scheduled": [f"{name}:latest"]}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("path", ["/-/refresh", "/-/refresh/hello"])
def test_other_methods_are_405_json_and_refresh_nothing(
        images: FakeImageService, clock: Clock, method: str, path: str) -> None:
    response, body = send(make_client(images, clock), method, path)
    assert response.code == 405  # type: ignore[attr-defined]
    assert response.headers.getRawHeaders("Allow") == ["POST"]  # type: ignore[attr-defined]
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert images.calls == []


def test_a_client_outside_the_allowed_networks_is_denied(images: FakeImageService, clock: Clock) -> None:
    # StubTreq's client is 127.0.0.1: allowing only 10.0.0.0/8 leaves it out.
    response, body = send(make_client(images, clock, RefreshAccess(("10.0.0.0/8",))), "POST", "/-/refresh")
    assert response.code == 403  # type: ignore[attr-defined]
    [error] = json.loads(body)["errors"]
    assert error["code"] == "DENIED" and error["detail"] == {"client": "127.0.0.1"}
    assert images.calls == []


def test_a_bad_or_refused_name_is_an_oci_error(images: FakeImageService, clock: Clock) -> None:
    client = make_client(images, clock)
    response, body = send(client, "POST", "/-/refresh/Not..Valid")
    assert response.code == 400 and json.loads(body)["errors"][0]["code"] == "NAME_INVALID"  # type: ignore[attr-defined]
    images.failures["refresh"] = NameUnknown("repository not served by this registry", {"name": "secret"})
    response, body = send(client, "POST", "/-/refresh/secret")
    assert response.code == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("rule", "host", "allowed"), [
    (("loopback",), "127.0.0.1", True),
    (("loopback",), "127.8.9.10", True),
    (("loopback",), "::1", True),
    (("loopback",), "::ffff:127.0.0.1", True),
    (("loopback",), "192.168.1.5", False),
    (("loopback",), None, False),
    (("any",), "203.0.113.9", True),
    (("10.0.0.0/8", "2001:db8::/32"), "10.1.2.3", True),
    (("10.0.0.0/8", "2001:db8::/32"), "2001:db8::7", True),
    (("10.0.0.0/8", "2001:db8::/32"), "127.0.0.1", False),
    (("10.0.0.0/8", "loopback"), "127.0.0.1", True),
])
def test_refresh_access(rule: tuple[str, ...], host: str | None, allowed: bool) -> None:
    assert RefreshAccess(rule).allows(host) is allowed


def test_parse_refresh_from() -> None:
    assert parse_refresh_from(" Loopback, 10.1.0.0/16 ,any") == ("loopback", "10.1.0.0/16", "any")
    assert parse_refresh_from("10.1.2.3/8") == ("10.0.0.0/8",)
    for bad in ("", "everyone", "10.0.0.0/33", "10.0.0.0/8,"):
        with pytest.raises(ValueError, match="loopback, any"):
            parse_refresh_from(bad)
