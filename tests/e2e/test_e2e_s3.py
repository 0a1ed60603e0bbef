"""Two real `twistd -n nixforge` replicas on one SeaweedFS bucket: the second serves what the first built."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from tests.e2e.e2e_support import BUILD_STARTED, ForgeFactory, ForgeProcess, run_tool, walk_tree
from tests.s3_server import SeaweedServer

NIX_BUILD = re.compile(r"running \S*nix build ")
TOOK_RECORDS = re.compile(r"took \d+ tag records other replicas stored")


def skopeo_copy(forge: ForgeProcess, name: str, target: Path) -> str:
    """Pull name:latest into an OCI layout with skopeo (it checks every digest); return the manifest digest."""
    run_tool(["skopeo", "copy", "--src-tls-verify=false", f"docker://{forge.registry}/{name}:latest",
              f"oci:{target}:latest"], timeout=600)
    index = json.loads((target / "index.json").read_text())
    return str(index["manifests"][0]["digest"])


def durable_files(data_dir: Path) -> list[str]:
    """Files in a replica's data dir outside its scratch (tmp/, gcroots/)."""
    scratch = ("tmp", "gcroots")
    return sorted(str(path.relative_to(data_dir)) for path in walk_tree(data_dir)
                  if path.is_file() and not path.is_symlink() and path.relative_to(data_dir).parts[0] not in scratch)


def test_a_replica_on_an_empty_disk_serves_every_image_another_built(
        forge_factory: ForgeFactory, s3_server: SeaweedServer, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket(f"e2e-{uuid.uuid4().hex[:12]}")
    environment = {**s3_server.environ(), "NIXFORGE_STORE": f"s3://{bucket}/registry"}
    builder = forge_factory("a", extra_env=environment)
    built = skopeo_copy(builder, "hello", tmp_path / "from-a")
    assert builder.matching_lines(NIX_BUILD), "replica A built hello"
    assert durable_files(builder.data_dir) == [], "nothing durable on A's disk: it is all in the bucket"

    server = forge_factory("b", extra_env=environment)
    assert skopeo_copy(server, "hello", tmp_path / "from-b") == built
    server.sync_log()
    assert server.matching_lines(NIX_BUILD) == [] and server.matching_lines(BUILD_STARTED) == []
    assert durable_files(server.data_dir) == []
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="registry/records/index/")
    assert [item["Key"].rsplit("/", 1)[1][:2] for item in listed["Contents"]] == ["r-"]


def test_a_running_replica_takes_what_another_built_since(
        forge_factory: ForgeFactory, s3_server: SeaweedServer, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket(f"e2e-{uuid.uuid4().hex[:12]}")
    environment = {**s3_server.environ(), "NIXFORGE_STORE": f"s3://{bucket}"}
    builder = forge_factory("a", extra_env=environment)
    server = forge_factory("b", extra_env=environment)  # running before A builds anything
    built = skopeo_copy(builder, "hello", tmp_path / "from-a")
    server.wait_for(TOOK_RECORDS, timeout=60, what="B taking A's record (a refresh every 15 s)")
    assert skopeo_copy(server, "hello", tmp_path / "from-b") == built
    server.sync_log()
    assert server.matching_lines(NIX_BUILD) == [] and server.matching_lines(BUILD_STARTED) == []
