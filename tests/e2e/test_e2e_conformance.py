"""The OCI distribution-spec conformance suite (v1.1.1, pull workflow, read-only) against a real nixforge."""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from pathlib import Path

import pytest
from e2e_support import OCI_MANIFEST, ForgeFactory, nix_env

REPO = Path(__file__).resolve().parents[2]
# CI clones the repository beside `shared/`, as the work trees are: look next to the repository.
DEFAULT_SUITE = REPO.parent / "shared" / "tools" / "oci-conformance-v1.1.1"
SUITE_VARIABLE = "OCI_CONFORMANCE_SUITE"
RAN = re.compile(r"Ran (\d+) of (\d+) Specs")
TALLY = re.compile(r"(\d+) Passed \| (\d+) Failed")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def conformance_suite() -> Path:
    """The suite binary ($NIXFORGE_OCI_CONFORMANCE, else ../shared/tools/…); skip loudly without it."""
    suite = Path(os.environ.get(SUITE_VARIABLE) or DEFAULT_SUITE)
    if not os.access(suite, os.X_OK):
        reason = (f"OCI conformance suite NOT RUN: no executable at {suite} "
                  f"(set {SUITE_VARIABLE} to the v1.1.1 conformance binary)")
        warnings.warn(reason, stacklevel=2)
        pytest.skip(reason)
    return suite


def test_the_pull_workflow_of_the_conformance_suite_passes(forge_factory: ForgeFactory, tmp_path: Path) -> None:
    suite = conformance_suite()
    forge = forge_factory("conformance", log_level="INFO")
    manifest = forge.manifest("hello")  # builds the image with real Nix
    assert manifest.headers["content-type"] == OCI_MANIFEST
    layer = manifest.json()["layers"][0]["digest"]
    work_dir = tmp_path / "suite"  # the suite writes junit.xml and report.html where it runs
    work_dir.mkdir()
    env = {
        **nix_env(),
        "OCI_ROOT_URL": f"http://{forge.registry}", "OCI_NAMESPACE": "hello", "OCI_TEST_PULL": "1",
        "OCI_TAG_NAME": "latest", "OCI_MANIFEST_DIGEST": manifest.headers["docker-content-digest"],
        "OCI_BLOB_DIGEST": layer, "OCI_HIDE_SKIPPED_WORKFLOWS": "1",
    }
    result = subprocess.run([str(suite)], cwd=work_dir, env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    output = ANSI.sub("", result.stdout + result.stderr)
    ran, tally = RAN.search(output), TALLY.search(output)
    assert ran and tally, output[-4000:]
    specs, passed, failed = int(ran.group(1)), int(tally.group(1)), int(tally.group(2))
    assert specs > 0, output[-4000:]
    assert failed == 0, output[-6000:]
    assert passed == specs
    assert result.returncode == 0, output[-4000:]
