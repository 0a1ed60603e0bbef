"""Two real `twistd -n nixforge` replicas on one SeaweedFS bucket: the second serves what the first built."""

from __future__ import annotations

import json
import re
import threading
import uuid
from pathlib import Path

from tests.e2e.e2e_support import BUILD_STARTED, DOCKER_ACCEPT, ForgeFactory, ForgeProcess, run_tool, walk_tree
from tests.s3_server import SeaweedServer

NIX_BUILD = re.compile(r"running \S*nix build ")
BUILT_ELSEWHERE = re.compile(r"hello:latest was built by another replica")
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
    metrics = server.get("/metrics").body.decode()
    assert 'nixforge_s3_requests_total{operation="get_object",outcome="ok"}' in metrics
    assert re.search(r'nixforge_http_requests_total\{code="307",method="GET",route="[^"]*blob', metrics), metrics
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


def test_concurrent_cold_pulls_over_three_replicas_build_once(
        forge_factory: ForgeFactory, s3_server: SeaweedServer, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket(f"e2e-{uuid.uuid4().hex[:12]}")
    environment = {**s3_server.environ(), "NIXFORGE_STORE": f"s3://{bucket}"}
    replicas = [forge_factory(name, extra_env=environment) for name in ("a", "b", "c")]
    answers: list[tuple[int, str]] = []

    def pull(forge: ForgeProcess) -> None:
        response = forge.manifest("hello", accept=DOCKER_ACCEPT)
        answers.append((response.status, response.headers.get("docker-content-digest", "")))

    threads = [threading.Thread(target=pull, args=(replicas[n % 3],)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert len(answers) == 50 and {status for status, _ in answers} == {200}
    assert len({digest for _, digest in answers}) == 1
    for forge in replicas:
        forge.sync_log()
    builders = [forge for forge in replicas if forge.matching_lines(BUILD_STARTED)]
    assert len(builders) == 1 and len(builders[0].matching_lines(BUILD_STARTED)) == 1  # one build in all
    waiters = [forge for forge in replicas if forge is not builders[0]]
    for n, waiter in enumerate(waiters):
        assert waiter.matching_lines(NIX_BUILD) == [] and len(waiter.matching_lines(BUILT_ELSEWHERE)) == 1
        skopeo_copy(waiter, "hello", tmp_path / f"from-waiter-{n}")  # it knows the blobs the builder stored
