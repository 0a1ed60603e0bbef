"""kill -9 of the replica holding a build lease: another replica takes the build over and serves the pull."""

from __future__ import annotations

import re
import secrets
import threading
import uuid
from pathlib import Path

from tests.e2e.e2e_support import FIXTURE_FLAKES, ForgeFactory, HttpResponse, prepare_flake, run_tool
from tests.s3_server import SeaweedServer

STARTED = re.compile(r"build started killbuild:latest")
WAITING = re.compile(r"another replica is building killbuild:latest")
TOOK_OVER = re.compile(r"took the build lease of killbuild:latest")


def test_kill_9_of_the_lease_holder_mid_build(forge_factory: ForgeFactory, s3_server: SeaweedServer,
                                              tmp_path: Path) -> None:
    # A flake copy of its own, with a fresh nonce: killbuild (a 3 s build) really builds in this test.
    flake = prepare_flake(FIXTURE_FLAKES / "forge", tmp_path / "flake", secrets.token_hex(6))
    bucket = s3_server.create_bucket(f"lease-{uuid.uuid4().hex[:12]}")
    environment = {**s3_server.environ(), "NIXFORGE_STORE": f"s3://{bucket}", "NIXFORGE_BUILD_LEASE": "3"}
    holder = forge_factory("a", flake=f"path:{flake}", extra_env=environment)
    waiter = forge_factory("b", flake=f"path:{flake}", extra_env=environment)
    answers: dict[str, HttpResponse] = {}

    def pull(name: str, forge_name: str) -> None:
        forge = holder if forge_name == "a" else waiter
        try:
            answers[forge_name] = forge.manifest(name)
        except OSError:  # the killed replica's connection
            pass

    first = threading.Thread(target=pull, args=("killbuild", "a"))
    first.start()
    holder.wait_for(STARTED, 300, what="A's build of killbuild")
    second = threading.Thread(target=pull, args=("killbuild", "b"))
    second.start()
    waiter.wait_for(WAITING, 60, what="B waiting for A's build")
    holder.kill()
    first.join(60)
    second.join(300)
    assert answers["b"].status == 200, answers["b"].body[:500]
    waiter.wait_for(TOOK_OVER, 10, what="B taking the build lease over")
    assert waiter.matching_lines(STARTED)
    run_tool(["skopeo", "copy", "--src-tls-verify=false", f"docker://{waiter.registry}/killbuild:latest",
              f"oci:{tmp_path / 'copy'}:latest"], timeout=600)
