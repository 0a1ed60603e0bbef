"""Fixtures shared by the API tests: a Clock-driven cooperator, the fake image service, logged failures."""

import pytest
from twisted.internet import task
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from .fake_images import FakeImageService


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A Clock that also drives the global cooperator, so streamed bodies finish deterministically."""
    clock = Clock()
    monkeypatch.setattr(task, "_theCooperator", task.Cooperator(scheduler=lambda f: clock.callLater(0, f)))
    return clock


@pytest.fixture
def images() -> FakeImageService:
    """An in-memory IImageService that records calls."""
    return FakeImageService()


@pytest.fixture
def failures():
    """Every event logged with a failure while the test runs (a traceback the server swallowed)."""
    captured: list[dict] = []

    def observer(event: dict) -> None:
        if "log_failure" in event:
            captured.append(event)

    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)
