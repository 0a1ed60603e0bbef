"""One tag for every system: an image index over x86_64-linux and aarch64-linux, with real clients.

Nix builds the aarch64-linux members with `extra-platforms` (their builder is the host's /bin/sh:
fake content, real platform bookkeeping), passed through as `--nix-option`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ForgeFactory,
    ForgeProcess,
    Podman,
    run_tool,
    sha256_digest,
)
from test_e2e_containerd import Containerd, containerd  # noqa: F401  (the module's containerd fixture)

SYSTEMS = ["--systems", "x86_64-linux,aarch64-linux"]
EXTRA_PLATFORMS = ["--nix-option", "extra-platforms=aarch64-linux"]
PLATFORMS = [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux", "variant": "v8"}]


@pytest.fixture(scope="module")
def index_forge(tmp_path_factory: pytest.TempPathFactory, flake_ref: str) -> Iterator[ForgeProcess]:
    """A registry serving every tag for both systems."""
    work_dir = tmp_path_factory.mktemp("index-forge")
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=work_dir / "data", work_dir=work_dir,
                         extra_args=[*SYSTEMS, *EXTRA_PLATFORMS]).start()
    yield forge
    forge.stop()


def skopeo(*args: str) -> str:
    """Run skopeo; return its stdout."""
    return run_tool(["skopeo", *args], timeout=600).stdout


def members(forge: ForgeProcess, name: str) -> tuple[dict, dict]:
    """The OCI index and the Docker manifest list `name:latest` serves."""
    index = forge.manifest(name, accept=OCI_INDEX)
    assert index.headers["content-type"] == OCI_INDEX
    manifest_list = forge.manifest(name, accept=DOCKER_LIST)
    assert manifest_list.headers["content-type"] == DOCKER_LIST
    return index.json(), manifest_list.json()


@pytest.mark.parametrize("name", ["hello", "tool-a"])
def test_the_tag_is_an_index_of_both_systems_whose_members_resolve(index_forge: ForgeProcess, name: str) -> None:
    """Index and list name both members in NIXFORGE_SYSTEMS order, with platforms their configs share;
    every member resolves by its digest; the same digests come back on a second pull."""
    index, manifest_list = members(index_forge, name)
    assert [entry["platform"] for entry in index["manifests"]] == PLATFORMS
    assert [entry["platform"] for entry in manifest_list["manifests"]] == PLATFORMS
    for entry, media_type in [*((e, OCI_MANIFEST) for e in index["manifests"]),
                              *((e, DOCKER_MANIFEST) for e in manifest_list["manifests"])]:
        assert entry["mediaType"] == media_type
        member = index_forge.manifest(name, entry["digest"], accept=media_type)
        assert sha256_digest(member.body) == entry["digest"] and len(member.body) == entry["size"]
        config = json.loads(index_forge.blob(name, member.json()["config"]["digest"]))
        platform = entry["platform"]
        assert (config["architecture"], config["os"]) == (platform["architecture"], platform["os"])
        if name == "tool-a":  # assembled here: the config says the variant too
            assert config.get("variant") == platform.get("variant")
    again = index_forge.manifest(name, accept=OCI_INDEX)
    assert json.loads(again.body) == index


def test_a_client_that_accepts_no_index_gets_the_host_image(index_forge: ForgeProcess) -> None:
    """Accept with only the plain manifest types: the amd64 member, in the asked form."""
    index, manifest_list = members(index_forge, "hello")
    for accept, listing in ((OCI_MANIFEST, index), (DOCKER_MANIFEST, manifest_list),
                            (f"{OCI_MANIFEST}, {DOCKER_MANIFEST}", index)):
        served = index_forge.manifest("hello", accept=accept)
        assert served.headers["docker-content-digest"] == listing["manifests"][0]["digest"], accept


def test_skopeo_picks_the_arm64_member_and_copies_all(index_forge: ForgeProcess, tmp_path: Path) -> None:
    """`--override-arch arm64 inspect` and `copy` pick the arm64 member; `copy --all` copies both."""
    reference = f"docker://{index_forge.registry}/tool-a:latest"
    served = index_forge.manifest("tool-a", accept=OCI_INDEX)
    index = served.json()
    amd64, arm64 = (entry["digest"] for entry in index["manifests"])

    def layers(digest: str) -> list[str]:
        member = index_forge.manifest("tool-a", digest, accept=OCI_MANIFEST).json()
        return [layer["digest"] for layer in member["layers"]]

    inspected = json.loads(skopeo("--override-arch", "arm64", "inspect", "--tls-verify=false", reference))
    # skopeo 1.9 reports the digest of the index it resolved, and the layers of the member it chose.
    assert (inspected["Architecture"], inspected["Digest"]) == ("arm64", served.headers["docker-content-digest"])
    assert inspected["Layers"] == layers(arm64) != layers(amd64)
    assert json.loads(skopeo("inspect", "--tls-verify=false", reference))["Layers"] == layers(amd64)
    skopeo("--override-arch", "arm64", "copy", "--src-tls-verify=false", reference, f"oci:{tmp_path / 'arm'}:t")
    [copied] = json.loads((tmp_path / "arm" / "index.json").read_text())["manifests"]
    assert copied["digest"] == arm64
    skopeo("copy", "--all", "--src-tls-verify=false", reference, f"oci:{tmp_path / 'all'}:t")
    [top] = json.loads((tmp_path / "all" / "index.json").read_text())["manifests"]
    blobs = tmp_path / "all" / "blobs" / "sha256"
    assert (top["mediaType"], top["digest"]) == (OCI_INDEX, served.headers["docker-content-digest"])
    for digest in (amd64, arm64):
        member = json.loads((blobs / digest.split(":")[1]).read_bytes())
        for blob in (member["config"], *member["layers"]):
            assert (blobs / blob["digest"].split(":")[1]).exists()


def test_podman_pulls_and_runs_the_host_image_through_the_index(index_forge: ForgeProcess, podman: Podman) -> None:
    """podman resolves the index to the amd64 member and runs it."""
    image = f"{index_forge.registry}/hello:latest"
    podman("pull", "--tls-verify=false", image)
    assert podman.run_image(image) == "Hello from nixforge\n"


def test_containerd_pulls_the_amd64_platform(containerd: Containerd, index_forge: ForgeProcess) -> None:  # noqa: F811
    """`ctr images pull --platform linux/amd64` of the index tag: the image's digest is the index's."""
    reference = f"{index_forge.registry}/tool-b:latest"
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/amd64", reference, timeout=600)
    row = containerd.image_check(reference)
    served = index_forge.manifest("tool-b", accept=f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}")
    assert served.headers["content-type"] == OCI_INDEX
    assert row["digest"] == served.headers["docker-content-digest"]
    assert row["unpacked"] == "true", row


def test_each_member_has_its_own_sbom(index_forge: ForgeProcess) -> None:
    """Referrers of each member digest list one SPDX artifact whose subject is that member."""
    index, _ = members(index_forge, "tool-b")
    for entry in index["manifests"]:
        [artifact] = index_forge.get(f"/v2/tool-b/referrers/{entry['digest']}").json()["manifests"]
        manifest = index_forge.manifest("tool-b", artifact["digest"], accept=OCI_MANIFEST).json()
        assert manifest["subject"]["digest"] == entry["digest"]


def test_a_system_that_cannot_build_fails_the_whole_tag(forge_factory: ForgeFactory) -> None:
    """Without extra-platforms Nix refuses the aarch64-linux build: 500 naming the system, no index."""
    forge = forge_factory("no-arm", extra_args=SYSTEMS)
    response = forge.get("/v2/fresh-b/manifests/latest", {"Accept": OCI_INDEX})
    assert response.status == 500, response.body
    [error] = response.json()["errors"]
    assert "aarch64-linux" in error["message"] and error["detail"]["system"] == "aarch64-linux"
    assert forge.get("/v2/fresh-b/tags/list").json()["tags"] == ["latest"]  # the catalog's, nothing stored
    assert not list((forge.data_dir / "index").glob("r-*.json"))
