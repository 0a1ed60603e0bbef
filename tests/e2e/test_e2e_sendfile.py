"""Blobs through the sendfile path of a real `twistd -n nixforge` on plain TCP: skopeo verifies every
digest, and Range requests on one kept-alive connection get exactly the layout's bytes."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from e2e_support import ForgeProcess, run_tool, sha256_digest


def test_skopeo_pull_and_ranges_over_plain_tcp(shared_forge: ForgeProcess, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    run_tool(["skopeo", "copy", "--src-tls-verify=false",
              f"docker://{shared_forge.registry}/hello:latest", f"oci:{layout}:hello"])
    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_bytes())
    [layer] = manifest["layers"]
    data = (blobs / layer["digest"].removeprefix("sha256:")).read_bytes()
    assert sha256_digest(data) == layer["digest"] and len(data) == layer["size"]

    size = len(data)
    ranges = [(0, 0), (1, size // 3), (size // 2, size - 1), (size - 7, size - 1)]
    connection = http.client.HTTPConnection("127.0.0.1", shared_forge.port, timeout=60)
    try:
        for first, last in ranges:  # one connection: each body must end exactly where its length says
            connection.request("GET", f"/v2/hello/blobs/{layer['digest']}", headers={"Range": f"bytes={first}-{last}"})
            response = connection.getresponse()
            body = response.read()
            assert response.status == 206
            assert response.getheader("Content-Range") == f"bytes {first}-{last}/{size}"
            assert response.getheader("Transfer-Encoding") is None
            assert body == data[first:last + 1]
        connection.request("GET", f"/v2/hello/blobs/{layer['digest']}")
        response = connection.getresponse()
        assert response.status == 200
        assert sha256_digest(response.read()) == layer["digest"]
    finally:
        connection.close()
