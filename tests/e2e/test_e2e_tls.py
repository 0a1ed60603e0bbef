"""TLS: nixforge on an `ssl:` endpoint with a certificate from the test's own CA; skopeo and podman verify it."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path

import pytest
from e2e_support import ForgeFactory, ForgeProcess, Podman, require_tool, run_tool


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA (ca.crt in certs/, as --cert-dir wants it) and a server certificate for IP 127.0.0.1."""
    openssl = require_tool("openssl")
    root = tmp_path_factory.mktemp("pki")
    run_tool([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=nixforge test CA",
              "-keyout", str(root / "ca.key"), "-out", str(root / "ca.crt")])
    run_tool([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
              "-keyout", str(root / "server.key"), "-out", str(root / "server.csr")])
    (root / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
    )
    run_tool([openssl, "x509", "-req", "-in", str(root / "server.csr"), "-CA", str(root / "ca.crt"),
              "-CAkey", str(root / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(root / "server.ext"),
              "-out", str(root / "server.crt")])
    (root / "certs").mkdir()
    (root / "certs" / "ca.crt").write_bytes((root / "ca.crt").read_bytes())
    return root


@pytest.fixture
def tls_forge(forge_factory: ForgeFactory, pki: Path) -> ForgeProcess:
    endpoint = f"ssl:0:interface=127.0.0.1:privateKey={pki / 'server.key'}:certKey={pki / 'server.crt'}"
    return forge_factory("tls", extra_args=["--port", endpoint])


def test_https_with_the_ca_trusted(tls_forge: ForgeProcess, pki: Path) -> None:
    """A verifying HTTPS client (Python's, with only the test CA) gets /v2/."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with urllib.request.urlopen(f"https://{tls_forge.registry}/v2/", context=context, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_skopeo_verifies_and_pulls(tls_forge: ForgeProcess, pki: Path, tmp_path: Path) -> None:
    """skopeo with --cert-dir (TLS verification on) inspects and copies; without the CA it refuses."""
    source = f"docker://{tls_forge.registry}/hello:latest"
    untrusted = run_tool(["skopeo", "inspect", source], check=False)
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower(), untrusted.stderr
    image = json.loads(run_tool(["skopeo", "inspect", "--cert-dir", str(pki / "certs"), source]).stdout)
    assert image["Digest"].startswith("sha256:")
    run_tool(["skopeo", "copy", "--src-cert-dir", str(pki / "certs"), source, f"oci:{tmp_path / 'copy'}:hello"])
    assert (tmp_path / "copy" / "index.json").exists()


def test_podman_verifies_and_pulls(tls_forge: ForgeProcess, pki: Path, podman: Podman) -> None:
    """podman pull --cert-dir (no --tls-verify=false) pulls and runs the image; without the CA it refuses."""
    image = f"{tls_forge.registry}/hello:latest"
    untrusted = run_tool([*podman.base(), "pull", image], check=False)
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower(), untrusted.stderr
    podman("pull", "--cert-dir", str(pki / "certs"), image)
    assert podman.run_image(image).strip() == "Hello from nixforge"
