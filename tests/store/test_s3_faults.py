"""S3 calls against a store that is down or hangs: StoreUnavailable (503 for clients) within the bound."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from nixforge.errors import StoreUnavailable
from nixforge.store.s3_client import S3Calls, S3Settings, make_client


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """A loopback port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")


def test_a_hung_store_is_unavailable_within_the_bound(hung_endpoint: str) -> None:
    settings = S3Settings(endpoint=hung_endpoint, pool=2, connect_timeout=1, read_timeout=1)
    calls = S3Calls(make_client(settings), settings)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        calls("head_object", Bucket="bucket", Key="blobs/sha256/" + "0" * 64)
    assert time.monotonic() - started < calls.bound
    assert raised.value.retry_after > 0
    assert calls.stats[("head_object", "unreachable")].count == 1
    calls.close()


def test_a_stopped_store_is_unavailable_at_once() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = S3Settings(endpoint=f"http://127.0.0.1:{port}", pool=2, connect_timeout=1, read_timeout=1)
    calls = S3Calls(make_client(settings), settings)
    with pytest.raises(StoreUnavailable):
        calls("get_object", Bucket="bucket", Key="records/pulls.json")
    calls.close()
