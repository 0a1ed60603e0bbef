"""The object store stopped under a running replica: 503 with Retry-After, /readyz names it, then recovery."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from tests.e2e.e2e_support import DOCKER_ACCEPT, ForgeProcess, http_request, sha256_digest, wait_until
from tests.s3_server import SeaweedServer


def test_store_stopped_then_started(tmp_path: Path, flake_ref: str) -> None:
    server = SeaweedServer(tmp_path / "weed").start()  # a server of its own: this test stops it
    forge: ForgeProcess | None = None
    try:
        bucket = server.create_bucket(f"faults-{uuid.uuid4().hex[:12]}")
        environment = {**server.environ(), "NIXFORGE_STORE": f"s3://{bucket}", "NIXFORGE_READY_INTERVAL": "1"}
        forge = ForgeProcess(flake_ref=flake_ref, data_dir=tmp_path / "forge" / "data", work_dir=tmp_path / "forge",
                             extra_env=environment).start()
        manifest = forge.manifest("hello", accept=DOCKER_ACCEPT)
        assert manifest.status == 200
        layer = manifest.json()["layers"][-1]["digest"]
        assert wait_until(lambda: forge.get("/readyz").status == 200, 30)

        server.stop()
        assert wait_until(lambda: forge.get("/readyz").status == 503, 30)
        assert f"s3://{bucket}" in forge.get("/readyz").body.decode()
        started = time.monotonic()
        blob = forge.get(f"/v2/hello/blobs/{layer}")
        assert blob.status == 503 and blob.error_codes() == ["UNAVAILABLE"]
        assert 0 < int(blob.headers["retry-after"]) <= 30
        assert time.monotonic() - started < 10
        assert forge.manifest("hello", accept=DOCKER_ACCEPT).body == manifest.body  # cached: still served

        server.start()
        assert wait_until(lambda: forge.get("/readyz").status == 200, 60), forge.log_tail()

        def blob_served() -> bool:  # followed the 307; SeaweedFS's volume server may lag its S3 port a little
            answer = http_request(forge.url(f"/v2/hello/blobs/{layer}"))
            return answer.status == 200 and sha256_digest(answer.body) == layer

        assert wait_until(blob_served, 30)
    finally:
        if forge is not None:
            forge.stop()
        server.stop()
