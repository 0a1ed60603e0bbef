"""/nix-cache/ over real loopback TCP with the real nix: a narinfo then its NAR, and a client that goes away."""

from __future__ import annotations

import hashlib
import lzma
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from nixforge.api.app import RegistryApi
from nixforge.api.nix_cache import NixCacheApi
from nixforge.images.nix_cache import NixCache
from nixforge.images.policy import AccessPolicy
from nixforge.images.served_closures import ServedClosures
from nixforge.nix.client import NixClient
from nixforge.nix.commands import StorePathInfo
from nixforge.nix.narinfo import parse_narinfo
from nixforge.nix.signing import CacheKey
from nixforge.oci import media_types as mt
from nixforge.oci.documents import ImageManifests, ManifestDocument
from nixforge.oci.referrers import store_sbom
from nixforge.oci.sbom import PackageFacts
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.interfaces import TagRecord
from nixforge.store.locked_revisions import MemoryLockedRevisions
from nixforge.store.narinfo_records import NarRecords
from nixforge.store.tag_index import MemoryTagIndex
from tests.e2e.e2e_support import processes_matching
from tests.nix.test_nar_dump import add_to_store

from .fake_images import FakeImageService
from .recording_site import RecordingSite


@pytest.fixture
def reactor() -> Any:
    """The real (pytest-twisted) reactor: these tests run real processes over real TCP."""
    from twisted.internet import reactor as real_reactor

    return real_reactor


@pytest.fixture
def big_path(tmp_path: Path) -> str:
    data = tmp_path / "nar-api-big"
    data.write_bytes(os.urandom(24 << 20))
    return add_to_store(data)


@pytest.fixture
def served_site(reactor: Any, tmp_path: Path, big_path: str) -> Any:
    subprocess.run(["nix-store", "--generate-binary-cache-key", "t-1", str(tmp_path / "sec"),
                    str(tmp_path / "pub")], check=True)
    store = FilesystemBlobStore(str(tmp_path / "data"))
    index = MemoryTagIndex()
    oci = ManifestDocument(mt.OCI_MANIFEST, b'{"x":1}')
    docker = ManifestDocument(mt.DOCKER_MANIFEST, b'{"x":2}')
    nar_hash = subprocess.run(["nix-store", "-q", "--hash", big_path], check=True, capture_output=True,
                              text=True).stdout.strip()
    manifests = store_sbom(store, ImageManifests(oci, docker), [StorePathInfo(big_path, 1, (), nar_hash)],
                           big_path, PackageFacts(), "big", datetime(2026, 1, 1))
    index.put(TagRecord("big", "latest", oci.digest, docker.digest, 0.0, "src",
                        manifests=tuple(doc.digest for doc in manifests.related())))

    def run_in_thread(function: Any, *args: Any) -> Deferred[Any]:
        return deferToThread(function, *args)

    served = ServedClosures(index, store, AccessPolicy("path:/f", MemoryLockedRevisions()), run_in_thread)
    nix = NixClient(reactor, 120, env={"NIX_CONFIG": "substituters =\nexperimental-features ="})
    records = NarRecords.in_directory(str(tmp_path / "data"))
    cache = NixCache(served, nix, store, records, CacheKey.load(str(tmp_path / "sec")), run_in_thread, reactor)
    api = RegistryApi(FakeImageService(), reactor,
                      nix_cache=NixCacheApi(cache))
    port = reactor.listenTCP(0, RecordingSite(api.resource()), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}", store, records, cache
    port.stopListening()


def dumps_of(path: str) -> list[tuple[int, str]]:
    return [found for found in processes_matching(path) if "dump-path" in found[1]]


@pytest_twisted.inlineCallbacks
def test_narinfo_then_nar_then_no_nix(served_site: Any, big_path: str, reactor: Any) -> Any:
    url, store, records, _ = served_site
    hash_part = big_path[len("/nix/store/"):][:32]
    response = yield treq.get(f"{url}/nix-cache/{hash_part}.narinfo")
    assert response.code == 200
    fields = parse_narinfo((yield response.text()))
    nar = yield (yield treq.get(f"{url}/nix-cache/{fields['URL']}")).content()
    assert len(nar) == int(fields["FileSize"])
    expected = subprocess.run(["nix-store", "--dump", big_path], check=True, capture_output=True).stdout
    assert lzma.decompress(nar) == expected
    assert records.get(hash_part) is not None
    # Asked again: the same narinfo from the record, and the NAR blob unchanged.
    again = yield (yield treq.get(f"{url}/nix-cache/{hash_part}.narinfo")).text()
    assert parse_narinfo(again) == fields
    assert store.size("sha256:" + hashlib.sha256(nar).hexdigest()) == len(nar)


class _Asker(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.transport.write(self.request)


@pytest_twisted.inlineCallbacks
def test_a_client_that_goes_away_stops_the_dump(served_site: Any, big_path: str, reactor: Any) -> Any:
    url, _, records, cache = served_site
    hash_part = big_path[len("/nix/store/"):][:32]
    port = int(url.rsplit(":", 1)[1])
    asker = _Asker(f"GET /nix-cache/{hash_part}.narinfo HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    factory = ClientFactory()
    factory.buildProtocol = lambda addr: asker  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, factory)
    for _ in range(400):
        if dumps_of(big_path):
            break
        yield deferLater(reactor, 0.025, lambda: None)
    assert dumps_of(big_path), "nix store dump-path never started"
    asker.transport.loseConnection()
    for _ in range(400):
        if not dumps_of(big_path) and not cache._making:
            break
        yield deferLater(reactor, 0.025, lambda: None)
    assert not dumps_of(big_path), "the dump outlived its client"
    assert not cache._making and records.get(hash_part) is None
