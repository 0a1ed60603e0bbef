"""Fixtures shared by the API tests: a Clock-driven cooperator and the fake image service."""

import pytest
from twisted.internet import task
from twisted.internet.task import Clock

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
