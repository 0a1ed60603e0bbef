"""The Nix binary cache at /nix-cache/ against a real twistd and a real Nix client (`nix copy`)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from e2e_support import ForgeFactory, ForgeProcess, nix_closure, nix_command, nix_out_path, require_tool, run_tool

DUMPED = re.compile(r"stored the NAR of")


def make_key(directory: Path, name: str) -> tuple[Path, str]:
    """A key pair made by Nix itself; returns (secret key file, public key)."""
    directory.mkdir(parents=True, exist_ok=True)
    secret, public = directory / f"{name}.sec", directory / f"{name}.pub"
    run_tool(["nix-store", "--generate-binary-cache-key", name, str(secret), str(public)])
    return secret, public.read_text().strip()


def nix_copy(forge: ForgeProcess, store: Path, public_key: str, paths: list[Path], *extra: str,
             check: bool = True):
    """`nix copy --from <nixforge>/nix-cache --to <a fresh chroot store>` with one trusted key, Nix's cache fresh."""
    return run_tool(nix_command(
        "copy", "--from", forge.url("/nix-cache"), "--to", str(store),
        "--option", "trusted-public-keys", public_key,
        "--option", "narinfo-cache-negative-ttl", "0", "--option", "narinfo-cache-positive-ttl", "0",
        *extra, *map(str, paths)), timeout=300, check=check, cache_home=store.with_name(store.name + ".xdg-cache"))


def store_closure(store: Path, root: Path) -> list[Path]:
    """What a chroot store holds of `root`'s closure."""
    result = run_tool(nix_command("path-info", "--store", str(store), "-r", str(root)))
    return sorted(Path(line) for line in result.stdout.split())


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    return {"forge": make_key(tmp_path / "keys", "forge-1"), "other": make_key(tmp_path / "keys", "other-1")}


def test_nix_copies_a_served_closure_and_checks_the_signatures(
    forge_factory: ForgeFactory, flake_ref: str, keys: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """A served image's closure copies into a fresh store; another key is refused; the rest is 404."""
    secret, public = keys["forge"]
    forge = forge_factory(extra_args=["--cache-key-file", str(secret)])
    info = forge.get("/nix-cache/nix-cache-info")
    assert info.status == 200 and b"StoreDir: /nix/store" in info.body
    forge.manifest("tool-a")
    root = nix_out_path(flake_ref, "tool-a")
    closure = nix_closure(root)
    assert len(closure) >= 2, closure

    nix_copy(forge, tmp_path / "fresh", public, [root])
    assert store_closure(tmp_path / "fresh", root) == closure
    dumps = len(forge.matching_lines(DUMPED))
    assert dumps == len(closure), forge.log_tail()

    # The narinfo's fields, as Nix reads them.
    narinfo = forge.get(f"/nix-cache/{root.name[:32]}.narinfo")
    assert narinfo.status == 200
    fields = dict(line.split(": ", 1) for line in narinfo.body.decode().splitlines())
    assert fields["StorePath"] == str(root)
    assert fields["Compression"] == "xz" and fields["URL"].startswith("nar/") and fields["URL"].endswith(".nar.xz")
    assert fields["Sig"].startswith("forge-1:")
    assert fields["Deriver"].endswith("-tool-a.drv") and "/" not in fields["Deriver"]
    assert set(fields) == {"StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize",
                           "References", "Deriver", "Sig"}
    assert fields["NarHash"].startswith("sha256:") and len(fields["NarHash"]) == 7 + 52
    nar = forge.get("/nix-cache/" + fields["URL"])
    assert nar.status == 200 and len(nar.body) == int(fields["FileSize"])

    # A second fetch runs no Nix: the NARs are stored blobs.
    nix_copy(forge, tmp_path / "again", public, [root])
    assert store_closure(tmp_path / "again", root) == closure
    assert len(forge.matching_lines(DUMPED)) == dumps

    # Another key: Nix refuses the paths.
    _, other = keys["other"]
    refused = nix_copy(forge, tmp_path / "wrong-key", other, [root], check=False)
    assert refused.returncode != 0
    assert "signature" in refused.stderr, refused.stderr[-2000:]

    # Outside the served closures: 404, and it says why.
    unserved = nix_out_path(flake_ref, "tool-b")
    assert unserved not in closure
    answer = forge.get(f"/nix-cache/{unserved.name[:32]}.narinfo")
    assert answer.status == 404 and b"not in the closure" in answer.body
    assert forge.get(f"/nix-cache/{unserved.name[:32]}.narinfo", method="HEAD").status == 404


def test_a_refused_packages_paths_are_404(
    forge_factory: ForgeFactory, flake_ref: str, keys: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """Built while served, then refused by NIXFORGE_PACKAGES: only what a served image needs is left."""
    secret, public = keys["forge"]
    forge = forge_factory(extra_args=["--cache-key-file", str(secret)])
    forge.manifest("tool-a")
    forge.manifest("hello")
    tool_a, hello = nix_out_path(flake_ref, "tool-a"), nix_out_path(flake_ref, "hello")
    assert forge.get(f"/nix-cache/{tool_a.name[:32]}.narinfo").status == 200
    forge.stop()
    forge.extra_args += ["--packages", "hello"]
    forge.start()
    for path in nix_closure(tool_a):
        if path not in nix_closure(hello):
            answer = forge.get(f"/nix-cache/{path.name[:32]}.narinfo")
            assert answer.status == 404, (path, answer.body)
    assert forge.get(f"/nix-cache/{hello.name[:32]}.narinfo").status == 200
    nix_copy(forge, tmp_path / "hello-store", public, [hello])
    assert store_closure(tmp_path / "hello-store", hello) == nix_closure(hello)


def test_without_a_key_there_is_no_cache(forge: ForgeProcess) -> None:
    answer = forge.get("/nix-cache/nix-cache-info")
    assert answer.status == 404
    assert b"NIXFORGE_CACHE_KEY_FILE" in answer.body


def test_with_authentication_nix_gets_in_with_its_netrc(
    forge_factory: ForgeFactory, flake_ref: str, keys: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """With --htpasswd: Nix's netrc-file gets it in; without it, 401 and the copy fails."""
    secret, public = keys["forge"]
    passwords = tmp_path / "htpasswd"
    run_tool([require_tool("htpasswd"), "-c", "-bB", str(passwords), "nixhost", "s3cret"])
    forge = forge_factory(extra_args=["--cache-key-file", str(secret), "--htpasswd", str(passwords)])
    assert forge.get("/nix-cache/nix-cache-info").status == 401
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login nixhost password s3cret\n")
    auth = {"Authorization": "Basic " + base64.b64encode(b"nixhost:s3cret").decode()}
    assert forge.get("/v2/tool-a/manifests/latest", auth).status == 200
    root = nix_out_path(flake_ref, "tool-a")
    denied = nix_copy(forge, tmp_path / "no-netrc", public, [root], check=False)
    assert denied.returncode != 0 and "does not appear to be a binary cache" in denied.stderr, denied.stderr
    forge.sync_log()
    assert forge.matching_lines(re.compile(r"GET /nix-cache/nix-cache-info\S* .*\b401\b")), forge.log_tail()
    nix_copy(forge, tmp_path / "netrc-store", public, [root], "--option", "netrc-file", str(netrc))
    assert store_closure(tmp_path / "netrc-store", root) == nix_closure(root)
