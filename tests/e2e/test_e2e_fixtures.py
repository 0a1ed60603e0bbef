"""The fixture and demo flakes themselves, checked with Nix and skopeo directly (no nixforge)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_support import (
    nix_closure,
    nix_command,
    nix_env,
    nix_out_path,
    prepare_flake,
    processes_matching,
    run_tool,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_FLAKE = REPO / "examples" / "demo-flake"


def inspect_archive(archive: Path, tmp_path: Path) -> tuple[dict, dict]:
    """skopeo inspect (image and config) of a gzipped docker-archive; skopeo 1.9 needs it uncompressed."""
    tar = tmp_path / (archive.name.removesuffix(".gz"))
    with gzip.open(archive, "rb") as source, open(tar, "wb") as target:
        shutil.copyfileobj(source, target)
    image = json.loads(run_tool(["skopeo", "inspect", f"docker-archive:{tar}"]).stdout)
    config = json.loads(run_tool(["skopeo", "inspect", "--config", f"docker-archive:{tar}"]).stdout)
    return image, config


def test_hello_image_is_a_docker_archive_of_the_closure(flake_ref: str, tmp_path: Path) -> None:
    """hello.image: one layer, config Cmd is hello's bin/hello, and hello prints the greeting."""
    hello = nix_out_path(flake_ref, "hello")
    archive = nix_out_path(flake_ref, "hello.image")
    image, config = inspect_archive(archive, tmp_path)
    assert len(image["Layers"]) == 1
    assert config["rootfs"]["diff_ids"] == image["Layers"]
    assert config["config"]["Cmd"] == [f"{hello}/bin/hello"]
    assert f"PATH={hello}/bin" in config["config"]["Env"]
    output = subprocess.run([f"{hello}/bin/hello"], capture_output=True, text=True, check=True).stdout
    assert output == "Hello from nixforge\n"


def test_app1_containers_holds_two_archives(flake_ref: str, tmp_path: Path) -> None:
    """app1.containers is a directory with web.tar.gz and db.tar.gz, each a runnable image."""
    containers = nix_out_path(flake_ref, "app1.containers")
    assert sorted(p.name for p in containers.iterdir()) == ["compose.yaml", "db.tar.gz", "web.tar.gz"]
    for name in ("web", "db"):
        _, config = inspect_archive(containers / f"{name}.tar.gz", tmp_path)
        assert config["config"]["Cmd"][0].endswith(f"-{name}/bin/{name}")


def test_tools_share_a_dependency(flake_ref: str) -> None:
    """tool-a and tool-b both keep shared-lib and busybox in their runtime closures."""
    shared = nix_out_path(flake_ref, "shared-lib")
    busybox = nix_out_path(flake_ref, "busybox")
    for tool in ("tool-a", "tool-b"):
        path = nix_out_path(flake_ref, tool)
        assert nix_closure(path) == sorted([path, shared, busybox])
        output = run_tool([str(path / "bin" / tool)]).stdout
        assert output == f"{tool}: hello from nixforge\nlibshared v1\n"
    main = run_tool(nix_command("eval", "--raw", f"{flake_ref}#tool-a.meta.mainProgram")).stdout
    assert main == "tool-a"


def test_shared_lib_has_every_kind_of_file(flake_ref: str) -> None:
    """shared-lib holds what the fidelity test compares: links, odd names, a hard link, a big file."""
    root = nix_out_path(flake_ref, "shared-lib")
    data = root / "share" / "shared-lib"
    assert (root / "lib" / "libshared.so").readlink() == Path("libshared.so.1")
    assert (root / "lib" / "libshared-absolute.so").readlink() == root / "lib" / "libshared.so.1"
    assert (data / "dangling-link").is_symlink() and not (data / "dangling-link").exists()
    assert list((data / "empty-dir").iterdir()) == []
    assert (data / "hard-a").stat().st_ino == (data / "hard-b").stat().st_ino
    assert (data / "run.sh").stat().st_mode & 0o111
    assert not (data / "plain.txt").stat().st_mode & 0o111
    assert (data / "日本語.txt").read_text() == "日本\n"
    assert (data / "with space" / "file name.txt").exists()
    assert (data / "big.bin").stat().st_size == 30 * 1024 * 1024


@pytest.mark.parametrize("attr", ["broken", "broken.image", "nobuild"])
def test_failing_attrs_fail_with_the_marker(flake_ref: str, attr: str) -> None:
    """broken, broken.image and nobuild fail, saying `deliberate failure`."""
    result = run_tool(nix_command("build", "--no-link", f"{flake_ref}#{attr}"), check=False)
    assert result.returncode != 0
    assert "nixforge-test: deliberate failure" in result.stderr


def test_slow_runs_with_its_marker_and_nix_term_cleans_up(flake_ref: str, nonce: str) -> None:
    """slow's builder carries `nixforge-slow-<nonce>` in argv; SIGTERM to Nix ends the builder too."""
    marker = f"nixforge-slow-{nonce}"
    process = subprocess.Popen(
        nix_command("build", "--no-link", f"{flake_ref}#slow"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=nix_env(),
    )
    try:
        assert wait_until(lambda: len(processes_matching(marker)) >= 2, timeout=60)
    finally:
        process.terminate()
        process.wait(60)
    assert wait_until(lambda: not processes_matching(marker), timeout=30), processes_matching(marker)


def test_demo_flake_builds(tmp_path: Path) -> None:
    """The README's demo flake: hello.image is an archive, greet runs."""
    demo = prepare_flake(DEMO_FLAKE, tmp_path / "demo", "demo")
    ref = f"path:{demo}"
    image, config = inspect_archive(nix_out_path(ref, "hello.image"), tmp_path)
    assert len(image["Layers"]) == 1
    assert config["config"]["Cmd"][0].endswith("/bin/hello")
    greet = nix_out_path(ref, "greet")
    assert run_tool([str(greet / "bin" / "greet")]).stdout.startswith("Greetings from a closure image")
