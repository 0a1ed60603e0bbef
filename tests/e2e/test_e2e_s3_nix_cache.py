"""The Nix binary cache on a bucket: a replica serves the narinfos and NARs another replica made."""

from __future__ import annotations

import uuid
from pathlib import Path

from e2e_support import ForgeFactory, nix_closure, nix_out_path
from test_e2e_nix_cache import DUMPED, make_key, nix_copy, store_closure
from test_e2e_s3_redirect import get_without_redirects

from tests.s3_server import SeaweedServer


def test_a_replica_serves_the_nars_another_made(forge_factory: ForgeFactory, flake_ref: str,
                                                s3_server: SeaweedServer, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket(f"e2e-{uuid.uuid4().hex[:12]}")
    environment = {**s3_server.environ(), "NIXFORGE_STORE": f"s3://{bucket}"}
    secret, public = make_key(tmp_path / "keys", "forge-1")
    maker = forge_factory("a", extra_env=environment, extra_args=["--cache-key-file", str(secret)])
    maker.manifest("tool-a")
    root = nix_out_path(flake_ref, "tool-a")
    closure = nix_closure(root)
    nix_copy(maker, tmp_path / "from-a", public, [root])
    maker.sync_log()
    assert len(maker.matching_lines(DUMPED)) == len(closure), maker.log_tail()

    # B starts on an empty disk: the records and NARs are in the bucket, its own Nix dumps nothing.
    server = forge_factory("b", extra_env=environment, extra_args=["--cache-key-file", str(secret)])
    nix_copy(server, tmp_path / "from-b", public, [root])
    assert store_closure(tmp_path / "from-b", root) == closure
    server.sync_log()
    assert server.matching_lines(DUMPED) == [], server.log_tail()
    narinfo = server.get(f"/nix-cache/{root.name[:32]}.narinfo").body.decode()
    url = next(line.split(": ", 1)[1] for line in narinfo.splitlines() if line.startswith("URL: "))
    nar = get_without_redirects(server.url(f"/nix-cache/{url}"))
    assert nar.status == 307 and bucket in nar.headers["location"], (nar.status, nar.headers)
