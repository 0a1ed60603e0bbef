"""kill -9 of a writer in the middle of a multipart upload: nothing becomes visible, GC clears the parts."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from nixforge.store.s3_blobs import S3BlobStore
from nixforge.store.s3_client import S3Calls, S3Location
from tests.s3_server import SeaweedServer
from tests.store.backends import BUCKET, scratch

# The writer: an S3BlobStore that says so after its first part went up, then stalls until killed.
WRITER = """
import os, sys, time
from nixforge.store.s3_blobs import S3BlobStore
from nixforge.store.s3_client import S3Calls, S3Location, S3Settings, make_client

class Stalling(S3Calls):
    def __call__(self, operation, **arguments):
        result = super().__call__(operation, **arguments)
        if operation == "upload_part":
            print("part uploaded", flush=True)
            time.sleep(600)
        return result

settings = S3Settings(endpoint=os.environ["NIXFORGE_S3_ENDPOINT"], pool=2)
calls = Stalling(make_client(settings), settings)
store = S3BlobStore(calls, S3Location(sys.argv[1], sys.argv[2]), sys.argv[3],
                    multipart_threshold=6 << 20, part_size=5 << 20)
writer = store.writer()
with open(sys.argv[4], "rb") as data:
    while chunk := data.read(1 << 20):
        writer.write(chunk)
writer.commit()
"""


def test_a_writer_killed_mid_multipart_upload_leaves_nothing_visible(
        s3_server: SeaweedServer, s3_calls: S3Calls, s3_location: S3Location, tmp_path: Path) -> None:
    data = os.urandom(12 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (tmp_path / "layer").write_bytes(data)
    environment = {**os.environ, **s3_server.environ()}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, BUCKET, s3_location.prefix, scratch(tmp_path), str(tmp_path / "layer")],
        stdout=subprocess.PIPE, env=environment, cwd=Path(__file__).parents[2])
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"part uploaded\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    client = s3_server.client()
    base = f"{s3_location.prefix}blobs/sha256/"
    [upload] = client.list_multipart_uploads(Bucket=BUCKET, Prefix=base)["Uploads"]  # the parts are there
    assert upload["Key"] == base + digest.split(":")[1]
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=s3_location.prefix)

    now = [0.0]
    replica = S3BlobStore(s3_calls, s3_location, scratch(tmp_path), grace=60, monotonic=lambda: now[0])
    assert replica.size(digest) is None and list(replica.digests()) == []
    assert replica.remove_abandoned() == 0  # first seen now: within the grace period
    now[0] += 61
    assert replica.remove_abandoned() == 1
    assert "Uploads" not in client.list_multipart_uploads(Bucket=BUCKET, Prefix=base)

    writer_again = replica.writer()  # the same blob, written again, goes up whole
    writer_again.write(data)
    assert writer_again.commit(digest) == (digest, len(data))
    assert replica.read(digest) == data
    client.close()


def test_gc_never_aborts_a_running_upload_of_its_own(s3_calls: S3Calls, s3_location: S3Location,
                                                     tmp_path: Path) -> None:
    swept: list[int] = []

    class SweepingMidUpload(S3Calls):
        def __call__(self, operation: str, **arguments: object) -> object:
            result = super().__call__(operation, **arguments)
            if operation == "upload_part" and not swept:
                swept.append(store.remove_abandoned())  # GC runs while the upload is under way
            return result

    calls = SweepingMidUpload(s3_calls.client, s3_calls.settings)
    store = S3BlobStore(calls, s3_location, scratch(tmp_path), grace=0, multipart_threshold=6 << 20,
                        part_size=5 << 20)
    data = os.urandom(11 << 20)
    try:
        writer = store.writer()
        writer.write(data)
        digest, _ = writer.commit()
    finally:
        calls.close()
    assert swept == [0]
    assert S3BlobStore(s3_calls, s3_location, scratch(tmp_path)).read(digest) == data
