"""`nix/<name>`: the nix-snapshotter form of an image, pulled by containerd, its paths substituted from /nix-cache/.

The nix-snapshotter binary itself is not here (it needs a newer Go than Debian's): containerd pulls
and unpacks the image with its default snapshotter, and a fresh Nix store plays the node's part,
realising every annotated store path from nixforge's cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from e2e_support import ForgeFactory, ForgeProcess, nix_closure, nix_out_path
from test_e2e_containerd import Containerd, containerd  # noqa: F401  (the module's containerd fixture)
from test_e2e_nix_cache import make_key, nix_copy, store_closure

NIX_LAYER = "containerd.io/snapshot/nix-layer"
STORE_PATH = "containerd.io/snapshot/nix-store-path."


@pytest.fixture
def keyed_forge(forge_factory: ForgeFactory, tmp_path: Path) -> tuple[ForgeProcess, str]:
    secret, public = make_key(tmp_path / "keys", "forge-1")
    return forge_factory(extra_args=["--cache-key-file", str(secret)]), public


@pytest.mark.parametrize("package", ["tool-a", "hello"])
def test_nix_image_names_the_closure_and_every_path_substitutes(
    keyed_forge: tuple[ForgeProcess, str], flake_ref: str, tmp_path: Path, package: str
) -> None:
    """The layer's annotations are `nix path-info -r` of the root; each path comes from the cache."""
    forge, public = keyed_forge
    manifest = forge.manifest(f"nix/{package}").json()
    ordinary = forge.manifest(package).json()
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    annotations = layer["annotations"]
    assert annotations[NIX_LAYER] == "true"
    paths = [annotations[f"{STORE_PATH}{i}"] for i in range(len(annotations) - 1)]
    root = nix_out_path(flake_ref, package)
    assert sorted(map(Path, paths)) == nix_closure(root)

    config = json.loads(forge.blob(f"nix/{package}", manifest["config"]["digest"]))
    base = json.loads(forge.blob(package, ordinary["config"]["digest"]))
    assert config["config"].get("Entrypoint") == base["config"].get("Entrypoint")
    assert config["config"].get("Cmd") == base["config"].get("Cmd")
    assert config["config"].get("Env") == base["config"].get("Env")
    assert (config["architecture"], config["os"]) == (base["architecture"], base["os"])
    tar = gzip.decompress(forge.blob(f"nix/{package}", layer["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = {member.name: member for member in archive}
    for path in paths:
        assert path.lstrip("/") in names and not names[path.lstrip("/")].size
    links = [member for member in names.values() if member.issym()]
    assert links and all(member.linkname.startswith(str(root) + "/") for member in links)

    for number, path in enumerate(paths):
        store = tmp_path / f"node-{number}"
        nix_copy(forge, store, public, [Path(path)])
        assert Path(path) in store_closure(store, Path(path))


def test_containerd_pulls_the_nix_image(keyed_forge: tuple[ForgeProcess, str],
                                        containerd: Containerd) -> None:  # noqa: F811
    forge, _ = keyed_forge
    reference = f"{forge.registry}/nix/tool-a:latest"
    containerd.pull(reference)
    row = containerd.image_check(reference)
    assert row["status"].startswith("complete"), row
    assert row["digest"] == forge.manifest("nix/tool-a").headers["docker-content-digest"]


def test_the_nix_form_of_an_unknown_name_is_404(keyed_forge: tuple[ForgeProcess, str]) -> None:
    forge, _ = keyed_forge
    answer = forge.get("/v2/nix/no-such-package/manifests/latest")
    assert answer.status == 404 and answer.error_codes() == ["NAME_UNKNOWN"]
