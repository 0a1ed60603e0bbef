"""HTTP Basic authentication: one wrapper for every route, bcrypt off the reactor, cache, delays, reloads."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from nixforge.api import RegistryApi
from nixforge.api.auth import Authenticator, AuthResource, FailureThrottle, parse_basic
from nixforge.api.htpasswd import HtpasswdFile, parse_htpasswd

from .fake_images import FakeImageService


def entry(user: str, password: str) -> str:
    """An htpasswd line as `htpasswd -nbB` writes it ($2y$), at bcrypt's cheapest cost."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    return f"{user}:{hashed}\n"


def basic(user: str, password: str) -> dict[str, list[str]]:
    return {"Authorization": ["Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()]}


class ThreadRecorder:
    """A run_in_thread that runs at once but records what was sent to the pool."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls.append(function.__name__)
        return maybeDeferred(function, *args)


class Harness:
    """The API behind AuthResource, driven over StubTreq with a Clock."""

    def __init__(self, tmp_path: Path, lines: str) -> None:
        from treq.testing import StubTreq

        self.path = tmp_path / "htpasswd"
        self.path.write_text(lines)
        self.clock = Clock()
        self.threads = ThreadRecorder()
        self.images = FakeImageService()
        self.images.add_image("hello", "latest")
        self.htpasswd = HtpasswdFile(str(self.path), self.threads, self.clock)
        self.htpasswd.load()
        self.authenticator = Authenticator(self.htpasswd, self.threads, self.clock)
        api = RegistryApi(self.images, self.clock)
        self.stub = StubTreq(AuthResource(api.resource(), self.authenticator))

    def send(self, path: str, headers: dict[str, list[str]] | None = None, method: str = "GET") -> Deferred:
        return self.stub.request(method, "http://registry.test" + path, headers=headers)

    def settle(self, deferred: Deferred, advance: float = 0.0) -> Any:
        results: list[Any] = []
        deferred.addBoth(results.append)
        for _ in range(200):
            if results:
                break
            self.stub.flush()
            self.clock.advance(advance)
        assert results, "no answer"
        if hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def request(self, path: str, headers: dict[str, list[str]] | None = None, method: str = "GET") -> tuple:
        response = self.settle(self.send(path, headers, method), advance=1.0)
        return response, self.settle(self.stub.content(response))


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path, entry("alice", "s3cret") + entry("bob", "hunter2"))


@pytest.mark.parametrize("path", ["/v2/", "/v2", "/v2/hello/manifests/latest", "/v2/_catalog",
                                  "/v2/hello/blobs/sha256:" + "0" * 64, "/elsewhere", "/v2/%ff",
                                  "/metrics", "/-/builds", "/-/builds/abc/log", "/healthz/", "/readyz/x"])
def test_every_route_answers_401_with_a_challenge_until_credentials_come(harness: Harness, path: str) -> None:
    response, body = harness.request(path)
    assert response.code == 401
    assert response.headers.getRawHeaders("WWW-Authenticate") == ['Basic realm="nixforge"']
    assert response.headers.getRawHeaders("Docker-Distribution-API-Version") == ["registry/2.0"]
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    assert harness.images.calls == []


@pytest.mark.parametrize("path, status", [("/healthz", 200), ("/readyz", 503)])
def test_the_probes_need_no_credentials(harness: Harness, path: str, status: int) -> None:
    response, _ = harness.request(path)
    assert response.code == status  # readiness not checked in this harness: 503, but not 401
    assert harness.threads.calls == []  # no bcrypt, no htpasswd read


def test_valid_credentials_reach_the_api_and_bcrypt_runs_once_in_the_pool(harness: Harness) -> None:
    for _ in range(5):
        response, _ = harness.request("/v2/hello/manifests/latest", basic("alice", "s3cret"))
        assert response.code == 200
    assert harness.authenticator.bcrypt_checks == 1
    assert harness.threads.calls.count("_bcrypt_matches") == 1
    assert harness.images.calls


def test_the_cache_holds_no_plaintext(harness: Harness) -> None:
    harness.request("/v2/", basic("alice", "s3cret"))
    assert harness.authenticator.cached == 1
    assert all(b"s3cret" not in key and b"alice" not in key for key in harness.authenticator._verified)


@pytest.mark.parametrize("headers", [
    basic("alice", "wrong"), basic("mallory", "s3cret"), basic("alice", "x" * 100),
    {"Authorization": ["Basic !!!notbase64"]}, {"Authorization": ["Bearer abc"]},
])
def test_wrong_credentials_get_401_after_a_delay(harness: Harness, headers: dict[str, list[str]]) -> None:
    pending = harness.send("/v2/", headers)
    answered: list[object] = []
    pending.addCallback(lambda response: answered.append(response) or response)
    harness.stub.flush()
    harness.clock.advance(0.4)
    harness.stub.flush()
    assert not answered, "answered before the delay"
    response = harness.settle(pending, advance=0.1)
    assert response.code == 401
    assert harness.images.calls == []


def test_delays_grow_per_client_and_reset_on_success(harness: Harness) -> None:
    throttle = harness.authenticator.throttle
    harness.request("/v2/", basic("alice", "wrong"))
    harness.request("/v2/", basic("alice", "wrong"))
    (client,) = throttle._failures
    assert throttle.failed(client) == 2.0  # the third failure of this address waits 0.5 * 2**2 = 2 s
    harness.request("/v2/", basic("alice", "s3cret"))
    assert len(throttle) == 0


def test_the_throttle_remembers_a_bounded_number_of_clients() -> None:
    throttle = FailureThrottle(Clock(), max_clients=3, max_delay=8.0)
    for number in range(10):
        throttle.failed(f"10.0.0.{number}")
    assert len(throttle) == 3
    delays = [throttle.failed("10.0.0.9") for _ in range(10)]
    assert delays[-1] == 8.0 and delays == sorted(delays)


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    harness = Harness(tmp_path, "".join(entry(f"user{n}", "pw") for n in range(5)))
    harness.authenticator._cache_size = 2
    for number in range(5):
        assert harness.request("/v2/", basic(f"user{number}", "pw"))[0].code == 200
    assert harness.authenticator.cached == 2


def test_a_changed_file_is_reread_in_the_pool(harness: Harness) -> None:
    assert harness.request("/v2/", basic("alice", "s3cret"))[0].code == 200
    harness.path.write_text(entry("alice", "new-password"))
    stat = harness.path.stat()
    os.utime(harness.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    harness.clock.advance(1.0)
    assert harness.request("/v2/", basic("alice", "s3cret"))[0].code == 401  # the cached success is gone too
    assert harness.request("/v2/", basic("alice", "new-password"))[0].code == 200
    assert harness.request("/v2/", basic("bob", "hunter2"))[0].code == 401
    assert "_read_if_changed" in harness.threads.calls


def test_a_removed_file_lets_nobody_in(harness: Harness) -> None:
    harness.path.unlink()
    harness.clock.advance(1.0)
    assert harness.request("/v2/", basic("alice", "s3cret"))[0].code == 401


def test_the_file_is_not_checked_more_than_once_a_second(harness: Harness) -> None:
    for _ in range(20):
        harness.settle(harness.send("/v2/", basic("alice", "s3cret")))
    assert harness.threads.calls.count("_read_if_changed") <= 1


def test_only_bcrypt_entries_are_kept() -> None:
    text = b"# comment\nalice:$2y$05$abc\nold:$apr1$xyz$abc\nplain:secret\n\nbob:$2b$12$def\nbroken\n"
    assert parse_htpasswd(text) == {"alice": b"$2y$05$abc", "bob": b"$2b$12$def"}


@pytest.mark.parametrize("header, expected", [
    (b"Basic " + base64.b64encode(b"u:p:q"), ("u", b"p:q")), (b"basic " + base64.b64encode(b"u:"), ("u", b"")),
    (b"Basic " + base64.b64encode(b"nocolon"), None), (b"Digest x", None), (None, None),
    (b"Basic " + base64.b64encode(b"\xff:p"), None),
])
def test_parse_basic(header: bytes | None, expected: object) -> None:
    assert parse_basic(header) == expected
