"""Copying a data-dir store into a bucket: everything arrives, a second run copies nothing, corrupt blobs stay out."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from nixforge.store.backend import open_store
from nixforge.store.durable_index import FilesystemTagIndex
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.interfaces import TagRecord
from nixforge.store.layer_cache import LayerBlob, LayerCache, layer_key
from nixforge.store.locked_revisions import FilesystemLockedRevisions
from nixforge.store.migrate import main
from nixforge.store.pull_times import PullTimes
from nixforge.store.s3_client import S3Settings
from tests.s3_server import SeaweedServer


def test_a_data_dir_moves_into_a_bucket_and_a_rerun_copies_nothing(
        s3_server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    data = tmp_path / "data"
    blobs = FilesystemBlobStore(str(data))
    config, _ = blobs.put(b"config")
    layer, layer_size = blobs.put(os.urandom(40_000))
    record = TagRecord("hello", "latest", config, config, 5.0, "path:/f")
    FilesystemTagIndex(str(data)).put(record)
    FilesystemLockedRevisions(str(data)).record("github:o/r", "d" * 40, "latest")
    LayerCache.in_directory(str(data / "layers")).put(layer_key(["/nix/store/x"]), LayerBlob(layer, layer_size, layer))
    pulls = PullTimes.in_file(str(data / "pulls.json"))
    pulls.record("hello", "latest", 42.0)
    pulls.save()
    bad = data / "blobs" / "sha256" / ("0" * 64)
    bad.write_bytes(b"not what the name says")
    bucket = s3_server.create_bucket(f"migrate-{uuid.uuid4().hex[:8]}")
    argv = [str(data), f"s3://{bucket}/moved", "--endpoint", s3_server.endpoint]

    assert main(argv) == 1  # the corrupt blob is reported
    assert "blobs: 2 copied, 0 already there, 1 corrupt; records: 3 copied" in capsys.readouterr().out
    assert main(argv) == 1
    assert "blobs: 0 copied, 2 already there, 1 corrupt; records: 0 copied, 3 already there" in capsys.readouterr().out

    backend = open_store(f"s3://{bucket}/moved", str(tmp_path / "replica"), time.time, 3600,
                         S3Settings(endpoint=s3_server.endpoint, pool=2))
    assert backend.index.get("hello", "latest") == record
    assert backend.revisions.refs("github:o/r", "d" * 40) == {"latest"}
    assert backend.blobs.size(layer) == layer_size and backend.blobs.size("sha256:" + "0" * 64) is None
    assert LayerCache(backend.records).get(layer_key(["/nix/store/x"]), backend.blobs) is not None
    assert PullTimes(backend.records).get("hello", "latest") == 42.0
    backend.close()
