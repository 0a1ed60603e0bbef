"""The SBOM of an image through the referrers API, from a real twistd after a real Nix build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from e2e_support import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    ForgeFactory,
    ForgeProcess,
    nix_closure,
    nix_command,
    nix_out_path,
    run_tool,
)
from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from nixforge.oci.nar_hash import nar_hash_hex

SPDX = "application/spdx+json"
EMPTY = "application/vnd.oci.empty.v1+json"


def nar_hashes(path: Path) -> dict[str, str]:
    """store path → narHash in hex, for the closure of `path`, as `nix path-info -r --json` says."""
    infos = json.loads(run_tool(nix_command("path-info", "-r", "--json", str(path))).stdout)
    entries = infos.items() if isinstance(infos, dict) else ((info["path"], info) for info in infos)
    return {entry_path: nar_hash_hex(info["narHash"]) for entry_path, info in entries}


def fetch_sbom(forge: ForgeProcess, name: str, accept: str) -> tuple[dict, dict, bytes]:
    """(referrers entry, artifact manifest, SBOM bytes) of `name:latest` in the form `accept` asks."""
    served = forge.manifest(name, accept=accept)
    digest = served.headers["docker-content-digest"]
    response = forge.get(f"/v2/{name}/referrers/{digest}")
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    [entry] = response.json()["manifests"]
    assert entry["artifactType"] == SPDX
    artifact_response = forge.manifest(name, entry["digest"], accept=OCI_MANIFEST)
    assert len(artifact_response.body) == entry["size"]
    artifact = artifact_response.json()
    assert artifact["artifactType"] == SPDX
    assert artifact["subject"] == {"mediaType": served.headers["content-type"], "digest": digest,
                                   "size": len(served.body)}
    assert artifact["config"]["mediaType"] == EMPTY
    assert forge.blob(name, artifact["config"]["digest"]) == b"{}"
    created = artifact["annotations"]["org.opencontainers.image.created"]
    assert entry["annotations"] == artifact["annotations"]
    [layer] = artifact["layers"]
    assert layer["mediaType"] == SPDX
    sbom = forge.blob(name, layer["digest"])
    assert len(sbom) == layer["size"]
    assert json.loads(sbom)["creationInfo"]["created"] == created
    return entry, artifact, sbom


def check_lists_closure(sbom: bytes, package: Path) -> None:
    """The SBOM is valid SPDX (spdx-tools) and lists exactly `package`'s closure, hashes and references."""
    document = JsonLikeDictParser().parse(json.loads(sbom))
    assert validate_full_spdx_document(document) == []
    hashes = nar_hashes(package)
    listed = {item.file_name: item for item in document.packages}
    assert set(listed) == {str(path) for path in nix_closure(package)} == set(hashes)
    for path, item in listed.items():
        assert [checksum.value for checksum in item.checksums] == [hashes[path]]
    ids = {item.spdx_id: path for path, item in listed.items()}
    described = [r.related_spdx_element_id for r in document.relationships if r.relationship_type.name == "DESCRIBES"]
    assert [ids[spdx_id] for spdx_id in described] == [str(package)]
    infos = json.loads(run_tool(nix_command("path-info", "-r", "--json", str(package))).stdout)
    entries = infos.items() if isinstance(infos, dict) else ((info["path"], info) for info in infos)
    expected = {(path, ref) for path, info in entries for ref in info["references"] if ref != path}
    found = {(ids[r.spdx_element_id], ids[r.related_spdx_element_id])
             for r in document.relationships if r.relationship_type.name == "DEPENDS_ON"}
    assert found == expected


@pytest.mark.parametrize("name", ["tool-a", "hello"])
def test_an_images_sbom_through_referrers_lists_its_closure(
    shared_forge: ForgeProcess, flake_ref: str, name: str
) -> None:
    """tool-a (assembled from its closure) and hello (the flake's .image): each OCI and Docker
    manifest has one SPDX artifact, whose blob is valid SPDX listing the package's closure."""
    oci_entry, _, oci_sbom = fetch_sbom(shared_forge, name, OCI_MANIFEST)
    docker_entry, _, docker_sbom = fetch_sbom(shared_forge, name, DOCKER_MANIFEST)
    assert oci_entry["digest"] != docker_entry["digest"]
    assert oci_sbom == docker_sbom  # one document, two subjects
    check_lists_closure(oci_sbom, nix_out_path(flake_ref, name))


def test_referrers_filter_and_digests_without_sbom(shared_forge: ForgeProcess) -> None:
    """?artifactType= filters with OCI-Filters-Applied; an artifact or unknown digest has no referrers."""
    digest = shared_forge.manifest("tool-b", accept=OCI_MANIFEST).headers["docker-content-digest"]
    for wanted, count in ((SPDX, 1), ("application/vnd.example.other+json", 0)):
        response = shared_forge.get(f"/v2/tool-b/referrers/{digest}?artifactType={quote(wanted, safe='')}")
        assert response.headers["oci-filters-applied"] == "artifactType"
        assert len(response.json()["manifests"]) == count
    [entry] = shared_forge.get(f"/v2/tool-b/referrers/{digest}").json()["manifests"]
    for other in (entry["digest"], "sha256:" + "0" * 64):
        response = shared_forge.get(f"/v2/tool-b/referrers/{other}")
        assert (response.status, response.json()["manifests"]) == (200, [])
    assert shared_forge.get("/v2/tool-b/referrers/sha256:xyz").status == 400


def test_the_sbom_is_the_same_after_a_rebuild_from_nothing(forge_factory: ForgeFactory) -> None:
    """Deterministic: a wiped data dir gives the same artifact digest and SBOM bytes for tool-b."""
    forge = forge_factory("sbom-wipe")
    first_entry, _, first_sbom = fetch_sbom(forge, "tool-b", OCI_MANIFEST)
    forge.stop()
    shutil.rmtree(forge.data_dir)
    forge.start()
    entry, _, sbom = fetch_sbom(forge, "tool-b", OCI_MANIFEST)
    assert (entry["digest"], sbom) == (first_entry["digest"], first_sbom)
