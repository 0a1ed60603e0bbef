"""NAR dumps with the real nix binary: streamed, xz-compressed, hashed, paused under pressure, killed on cancel."""

from __future__ import annotations

import hashlib
import lzma
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from nixforge.nix.client import NixClient, NixError, NixTimeout
from nixforge.nix.nar_dump import NarHashMismatch, start_dump
from nixforge.store.interfaces import IBlobWriter
from nixforge.store.memory import MemoryBlobStore


def add_to_store(path: Path) -> str:
    """`nix-store --add`: a real store path, no build."""
    return subprocess.run(["nix-store", "--add", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


def nar_of(store_path: str) -> bytes:
    return subprocess.run(["nix-store", "--dump", store_path], check=True, capture_output=True).stdout


@implementer(IBlobWriter)
class RecordingWriter:
    """A memory store's writer that notes its first write and whether it was aborted."""

    def __init__(self, store: MemoryBlobStore) -> None:
        self.inner = store.writer()
        self.first_write: Deferred[None] = Deferred()
        self.aborted = False
        self._reactor: Any = None

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        if not self.first_write.called:
            from twisted.internet import reactor

            reactor.callFromThread(lambda: self.first_write.called or self.first_write.callback(None))

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        return self.inner.commit(expected_digest)

    def abort(self) -> None:
        self.aborted = True
        self.inner.abort()


@pytest.fixture
def client(reactor: Any) -> NixClient:
    return NixClient(reactor, 120, env={"NIX_CONFIG": "substituters =\nexperimental-features ="})


@pytest.fixture
def small_path(tmp_path: Path) -> str:
    data = tmp_path / "nar-small"
    data.mkdir()
    (data / "file").write_bytes(b"hello NAR\n" * 5000)
    (data / "link").symlink_to("file")
    return add_to_store(data)


@pytest.fixture
def big_path(tmp_path: Path) -> str:
    data = tmp_path / "nar-big"
    data.write_bytes(os.urandom(16 << 20))
    return add_to_store(data)


@pytest_twisted.inlineCallbacks
def test_the_stored_blob_is_the_xz_of_the_nar(reactor: Any, client: NixClient, small_path: str) -> Any:
    store = MemoryBlobStore()
    nar = nar_of(small_path)
    dump = start_dump(reactor, client, small_path, store.writer(), deferToThread,
                      expected=hashlib.sha256(nar).digest())
    stored = yield dump.result
    blob = store.read(stored.digest)
    assert lzma.decompress(blob) == nar
    assert (stored.nar_size, stored.nar_sha256, stored.size) == (len(nar), hashlib.sha256(nar).digest(), len(blob))


@pytest_twisted.inlineCallbacks
def test_a_nar_that_does_not_match_its_hash_is_not_stored(reactor: Any, client: NixClient, small_path: str) -> Any:
    store = MemoryBlobStore()
    writer = RecordingWriter(store)
    dump = start_dump(reactor, client, small_path, writer, deferToThread, expected=b"\0" * 32)
    with pytest.raises(NarHashMismatch):
        yield dump.result
    assert writer.aborted


@pytest_twisted.inlineCallbacks
def test_nix_is_paused_while_the_compressor_is_behind(reactor: Any, client: NixClient, big_path: str) -> Any:
    store = MemoryBlobStore()
    dump = start_dump(reactor, client, big_path, store.writer(), deferToThread, preset=1, high_water=256 << 10)
    stored = yield dump.result
    assert dump.pauses > 0
    assert stored.nar_size > 16 << 20


@pytest_twisted.inlineCallbacks
def test_cancelling_kills_nix_and_discards_the_blob(reactor: Any, client: NixClient, big_path: str) -> Any:
    store = MemoryBlobStore()
    writer = RecordingWriter(store)
    dump = start_dump(reactor, client, big_path, writer, deferToThread)
    yield writer.first_write
    dump.result.cancel()
    with pytest.raises(CancelledError):
        yield dump.result
    reason = yield dump.exited
    assert reason.signal == 9
    yield dump.discarded  # after the batch in flight, in a worker thread
    assert writer.aborted
    assert not store._blobs


@pytest_twisted.inlineCallbacks
def test_a_path_nix_cannot_dump_fails(reactor: Any, client: NixClient) -> Any:
    store = MemoryBlobStore()
    writer = RecordingWriter(store)
    dump = start_dump(reactor, client, "/nix/store/" + "0" * 32 + "-absent", writer, deferToThread)
    with pytest.raises(NixError):
        yield dump.result
    yield dump.discarded
    assert writer.aborted


@pytest_twisted.inlineCallbacks
def test_a_dump_past_its_timeout_is_killed(reactor: Any, client: NixClient, big_path: str) -> Any:
    store = MemoryBlobStore()
    writer = RecordingWriter(store)
    dump = start_dump(reactor, client, big_path, writer, deferToThread)
    yield writer.first_write
    dump.time_out(5)
    with pytest.raises(NixTimeout) as caught:
        yield dump.result
    assert "after 5 s" in caught.value.message
    assert (yield dump.exited).signal == 9
    yield dump.discarded
    assert writer.aborted and not store._blobs
