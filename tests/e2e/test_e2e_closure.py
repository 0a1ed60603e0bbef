"""Images assembled from a package's closure (no `.image`): shared layers, determinism, fidelity."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

from e2e_support import (
    OCI_MANIFEST,
    ForgeFactory,
    ForgeProcess,
    Podman,
    nix_closure,
    nix_out_path,
    require_tool,
    run_tool,
    walk_tree,
)


def layer_store_paths(forge: ForgeProcess, name: str, digest: str) -> set[str]:
    """The top-level /nix/store entries a layer blob holds (e.g. `<hash>-shared-lib`)."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(forge.blob(name, digest)))) as tar:
        names = [member.name.removeprefix("./").removeprefix("/") for member in tar.getmembers()]
    return {n.split("/")[2] for n in names if n.startswith("nix/store/") and len(n.split("/")) > 2}


def layers_by_store_path(forge: ForgeProcess, name: str) -> dict[str, str]:
    """For each store path in the image, the digest of the layer that holds it."""
    manifest = forge.manifest(name).json()
    assert manifest["mediaType"] == OCI_MANIFEST
    found: dict[str, str] = {}
    for layer in manifest["layers"]:
        for entry in layer_store_paths(forge, name, layer["digest"]):
            assert entry not in found, f"{entry} is in two layers of {name}"
            found[entry] = layer["digest"]
    return found


def test_images_share_the_layer_of_a_shared_dependency(shared_forge: ForgeProcess, flake_ref: str) -> None:
    """tool-a and tool-b both hold shared-lib and busybox, in layers with the same digests."""
    tool_a = layers_by_store_path(shared_forge, "tool-a")
    tool_b = layers_by_store_path(shared_forge, "tool-b")
    for dependency in ("shared-lib", "busybox"):
        entry = nix_out_path(flake_ref, dependency).name
        assert entry in tool_a and entry in tool_b, (entry, tool_a, tool_b)
        assert tool_a[entry] == tool_b[entry]
    assert set(tool_a) == {p.name for p in nix_closure(nix_out_path(flake_ref, "tool-a"))}


def test_config_entrypoint_env_and_labels(shared_forge: ForgeProcess, flake_ref: str) -> None:
    """The config runs meta.mainProgram (tool-a) or the only executable (tool-b), with PATH and labels."""
    for tool in ("tool-a", "tool-b"):
        manifest = shared_forge.manifest(tool).json()
        config = json.loads(shared_forge.blob(tool, manifest["config"]["digest"]))
        package = nix_out_path(flake_ref, tool)
        command = (config["config"].get("Entrypoint") or []) + (config["config"].get("Cmd") or [])
        assert command[0] in (f"{package}/bin/{tool}", f"/bin/{tool}"), command
        assert any(env.startswith("PATH=") for env in config["config"]["Env"])
        labels = config["config"].get("Labels") or {}
        assert any(key.startswith("org.opencontainers.image.") for key in labels), labels
        assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])


def test_podman_runs_an_assembled_image(shared_forge: ForgeProcess, podman: Podman) -> None:
    """podman pulls and runs tool-a, assembled from its closure."""
    image = f"{shared_forge.registry}/tool-a:latest"
    podman("pull", "--tls-verify=false", image)
    assert podman.run_image(image) == "tool-a: hello from nixforge\nlibshared v1\n"


def test_same_manifest_digest_after_wiping_the_data_dir(forge_factory: ForgeFactory) -> None:
    """Assembly is deterministic: a wiped data dir and a restart give the same manifest digest."""
    forge = forge_factory("wipe")
    first = forge.manifest("tool-b").headers["docker-content-digest"]
    forge.stop()
    shutil.rmtree(forge.data_dir)
    forge.start()
    assert forge.manifest("tool-b").headers["docker-content-digest"] == first


def test_layer_budget_is_respected(forge_factory: ForgeFactory, flake_ref: str) -> None:
    """--max-layers 3 counts every layer: 3 in all, 2 of them for tool-a's 3 store paths, none lost."""
    closure = {p.name for p in nix_closure(nix_out_path(flake_ref, "tool-a"))}
    assert len(closure) == 3
    forge = forge_factory("budget", extra_args=["--max-layers", "3"])
    layers = layers_by_store_path(forge, "tool-a")
    manifest = forge.manifest("tool-a").json()
    assert len(manifest["layers"]) == 3
    assert len(set(layers.values())) == 2
    assert set(layers) == closure


def describe(path: Path) -> tuple:
    """What must match between the store and the unpacked image: type, mode bits, content or target."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return ("symlink", os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return ("dir", stat.S_IMODE(info.st_mode))
    assert stat.S_ISREG(info.st_mode), path
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return ("file", stat.S_IMODE(info.st_mode), info.st_size, digest.hexdigest())


def test_unpacked_image_matches_the_store(shared_forge: ForgeProcess, flake_ref: str, tmp_path: Path) -> None:
    """umoci unpacks tool-a; every path of its closure is there exactly as in /nix/store."""
    require_tool("umoci")
    layout = tmp_path / "layout"
    run_tool(["skopeo", "copy", "--src-tls-verify=false",
              f"docker://{shared_forge.registry}/tool-a:latest", f"oci:{layout}:tool-a"])
    bundle = tmp_path / "bundle"
    run_tool(["umoci", "unpack", "--image", f"{layout}:tool-a", str(bundle)])
    rootfs = bundle / "rootfs"
    closure = nix_closure(nix_out_path(flake_ref, "tool-a"))
    assert sorted(p.name for p in (rootfs / "nix" / "store").iterdir()) == sorted(p.name for p in closure)
    compared = 0
    for store_path in closure:
        inodes: dict[int, list[Path]] = {}
        for source in walk_tree(store_path):
            copy = rootfs / source.relative_to("/")
            assert describe(copy) == describe(source), source
            compared += 1
            if source.lstat().st_nlink > 1 and not source.is_symlink() and source.is_file():
                inodes.setdefault(source.lstat().st_ino, []).append(copy)
        for group in inodes.values():
            assert len({p.lstat().st_ino for p in group}) == 1, f"hard links split: {group}"
    assert compared > 20
    assert (rootfs / "tmp").is_dir()
    assert os.path.lexists(rootfs / "bin" / "tool-a")
