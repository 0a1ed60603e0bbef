"""The three backends the store contracts run against: memory, files, and a real SeaweedFS bucket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixforge.store.s3_client import S3Calls, S3Location, S3Settings
from tests.s3_server import SeaweedServer

BUCKET = "nixforge-contracts"


@pytest.fixture(scope="session")
def s3_calls(s3_server: SeaweedServer) -> Iterator[S3Calls]:
    """One client and call pool for the session's contract tests, on a bucket of the session's SeaweedFS."""
    s3_server.create_bucket(BUCKET)
    settings = S3Settings(endpoint=s3_server.endpoint, pool=8, connect_timeout=2, read_timeout=10)
    calls = S3Calls(s3_server.client(), settings)
    yield calls
    calls.close()


@pytest.fixture
def s3_location(s3_calls: S3Calls) -> S3Location:
    """A fresh prefix of the contracts bucket: every test starts on an empty store."""
    return S3Location(BUCKET, f"t-{uuid.uuid4().hex}/")


def scratch(tmp_path: Path) -> str:
    """A local scratch directory (temporary files of blob writers)."""
    path = tmp_path / "scratch"
    path.mkdir(exist_ok=True)
    return str(path)
