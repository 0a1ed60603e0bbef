"""GC of two replicas on one bucket: one collects at a time, and nothing a live record names is deleted."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

from tests.e2e.e2e_support import DOCKER_ACCEPT, ForgeFactory, ForgeProcess, wait_until
from tests.s3_server import SeaweedServer

GC_TURN = re.compile(r"gc \(\w+\): (deleted|another replica holds the GC lease)")
GC_DELETED = re.compile(r"gc \(\w+\): deleted (?P<count>\d+) blobs")


def deleted(forge: ForgeProcess) -> int:
    forge.sync_log()
    return sum(int(GC_DELETED.search(line).group("count")) for line in forge.matching_lines(GC_DELETED))  # type: ignore[union-attr]


def test_gc_on_two_replicas_deletes_garbage_once_and_keeps_every_live_blob(
        forge_factory: ForgeFactory, s3_server: SeaweedServer, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket(f"gc-{uuid.uuid4().hex[:12]}")
    environment = {**s3_server.environ(), "NIXFORGE_STORE": f"s3://{bucket}", "NIXFORGE_GC_INTERVAL": "1",
                   "NIXFORGE_GC_GRACE": "2"}
    a = forge_factory("a", extra_env=environment)
    b = forge_factory("b", extra_env=environment)
    manifest = a.manifest("hello", accept=DOCKER_ACCEPT)
    assert manifest.status == 200
    live = [manifest.json()["config"]["digest"], *(layer["digest"] for layer in manifest.json()["layers"])]
    client = s3_server.client()
    garbage = [b"left by a crashed upload %d" % n for n in range(3)]
    for body in garbage:
        client.put_object(Bucket=bucket, Key="blobs/sha256/" + hashlib.sha256(body).hexdigest(), Body=body)
    assert wait_until(lambda: deleted(a) + deleted(b) >= 3, 60), a.log_tail() + b.log_tail()
    later = {forge: len(forge.matching_lines(GC_TURN)) + 2 for forge in (a, b)}
    assert wait_until(lambda: all(len(f.matching_lines(GC_TURN)) >= n for f, n in later.items()), 60)
    assert deleted(a) + deleted(b) == 3  # more runs on both: each garbage blob went once, nothing else
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix="blobs/")["Contents"]}
    assert {"blobs/sha256/" + digest.split(":")[1] for digest in live} <= keys
    for forge in (a, b):
        for digest in live:
            assert forge.get(f"/v2/hello/blobs/{digest}").status == 200
    assert a.manifest("hello", accept=DOCKER_ACCEPT).body == manifest.body
    client.close()
