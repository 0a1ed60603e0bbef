"""Shared pytest configuration: marks the end-to-end tests (they run by default; `-m "not e2e"` skips them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3_server import SeaweedServer

E2E_DIR = Path(__file__).resolve().parent / "e2e"


def pytest_configure(config: pytest.Config) -> None:
    """Register the `e2e` marker."""
    config.addinivalue_line("markers", "e2e: end-to-end test with a real twistd, Nix, skopeo and podman")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as `e2e`."""
    for item in items:
        if E2E_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One real SeaweedFS for the whole session (S3 contract tests and e2e replicas); stopped at the end."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()
