"""/healthz and /readyz over an in-memory connection, and the route template each endpoint notes."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from nixforge.api import RegistryApi
from nixforge.readiness import Readiness

from .fake_images import FakeImageService, StubClient


def client_with(images: FakeImageService, clock: Clock, state: Readiness) -> StubClient:
    return StubClient(RegistryApi(images, clock, readiness=lambda: state).resource(), clock)


def test_healthz_is_200(images: FakeImageService, clock: Clock) -> None:
    response, body = client_with(images, clock, Readiness(checked=False)).request("GET", "/healthz")
    assert response.code == 200 and json.loads(body) == {"status": "alive"}


def test_readyz_ready(images: FakeImageService, clock: Clock) -> None:
    response, body = client_with(images, clock, Readiness(checked=True)).request("GET", "/readyz")
    assert response.code == 200 and json.loads(body) == {"status": "ready"}


@pytest.mark.parametrize("state, problems", [
    (Readiness(checked=False, problems=("the first readiness check has not finished",)),
     ["the first readiness check has not finished"]),
    (Readiness(checked=True, problems=("nix does not run: exit 1",)), ["nix does not run: exit 1"]),
])
def test_readyz_not_ready_is_503_json(images: FakeImageService, clock: Clock, state: Readiness,
                                      problems: list[str]) -> None:
    response, body = client_with(images, clock, state).request("GET", "/readyz")
    error = json.loads(body)["errors"][0]
    assert (response.code, error["code"], error["detail"]["problems"]) == (503, "UNAVAILABLE", problems)


def test_probes_refuse_writes(images: FakeImageService, clock: Clock) -> None:
    response, body = client_with(images, clock, Readiness(checked=True)).request("POST", "/readyz")
    assert response.code == 405 and json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
