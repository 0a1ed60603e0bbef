"""Nix across machines (docs/nix-builders.md): a post-build hook, max-jobs 0 and a remote builder, with real Nix."""

from __future__ import annotations

import functools
import platform
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.e2e_support import (
    FIXTURE_FLAKES,
    OCI_ACCEPT,
    OFFLINE_NIX_CONFIG,
    ForgeFactory,
    nix_command,
    nix_out_path,
    prepare_flake,
    run_tool,
)

SYSTEM = f"{platform.machine()}-linux"
# `path?` is optional: /lib64 and /etc/alternatives are not on every host.
SANDBOX_PATHS = "/bin /usr /lib /lib64? /etc/alternatives?"
# Nix 2.8's own words when max-jobs is 0 and no remote builder is configured.
REFUSAL = "unable to start any build; either increase '--max-jobs' or enable remote builds"

# The hook of docs/nix-builders.md, with the key and the cache of the test. Nix 2.8.0 leaves OUT_PATHS
# empty (NixOS/nix#6446), so the hook asks the derivation for its outputs then.
HOOK = """#!/bin/sh
set -eu
set -f
paths=${{OUT_PATHS:-$(nix-store --query --outputs "$DRV_PATH")}}
echo "nixforge-hook: uploading" $paths
nix --extra-experimental-features nix-command store sign --key-file {key} $paths
exec nix --extra-experimental-features nix-command copy --to {cache} $paths
"""


def fresh_flake(tmp_path: Path) -> Path:
    """A fixture flake copy with a nonce of its own: its nonce-dependent images really build here."""
    return prepare_flake(FIXTURE_FLAKES / "forge", tmp_path / "flake", secrets.token_hex(6))


def out_path(flake: Path, attr: str) -> str:
    """The output path of `attr` by evaluation alone (nothing is built)."""
    return run_tool(nix_command("eval", "--raw", f"path:{flake}#{attr}.outPath")).stdout.strip()


def narinfo_name(store_path: str) -> str:
    """`<hash>.narinfo`: the file a binary cache keeps for a store path."""
    return Path(store_path).name.split("-", 1)[0] + ".narinfo"


@contextmanager
def static_http_server(directory: Path) -> Iterator[str]:
    """Serve `directory`'s files on 127.0.0.1 (as nginx would a binary cache's); yield its URL."""
    handler = functools.partial(QuietFileHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class QuietFileHandler(SimpleHTTPRequestHandler):
    """Static files, without a stderr line per request."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_post_build_hook_fills_a_signed_cache_that_another_store_copies_from(
    forge_factory: ForgeFactory, tmp_path: Path
) -> None:
    flake = fresh_flake(tmp_path)
    secret, public = tmp_path / "cache.secret", tmp_path / "cache.public"
    run_tool(["nix-store", "--generate-binary-cache-key", "nixforge-test-cache-1", str(secret), str(public)])
    cache = tmp_path / "cache"
    hook = tmp_path / "upload-to-cache"
    hook.write_text(HOOK.format(key=secret, cache=f"file://{cache}"))
    hook.chmod(0o755)
    forge = forge_factory("hooked", flake=f"path:{flake}", extra_args=["--nix-option", f"post-build-hook={hook}"])

    forge.manifest("chatty")
    image, package = out_path(flake, "chatty.image"), out_path(flake, "chatty")
    for path in (image, package):
        narinfo = (cache / narinfo_name(path)).read_text()
        assert f"StorePath: {path}\n" in narinfo
        assert re.search(r"^Sig: nixforge-test-cache-1:\S+$", narinfo, re.MULTILINE), narinfo
    # The hook's output is part of the build's log, as Nix reports it.
    assert forge.matching_lines(re.compile(rf"nixforge-hook: uploading {re.escape(image)}"))

    # Another machine's store takes the path from the shared cache, trusting the key, not otherwise.
    untrusting = run_tool(nix_command("copy", "--from", f"file://{cache}", "--to", str(tmp_path / "untrusting"),
                                      image), check=False)
    assert untrusting.returncode != 0 and "lacks a valid signature" in untrusting.stderr
    trusted = public.read_text().strip()
    other = tmp_path / "other-store"
    run_tool(nix_command("copy", "--option", "trusted-public-keys", trusted,
                         "--from", f"file://{cache}", "--to", str(other), image))
    assert run_tool(nix_command("path-info", "--store", str(other), image)).stdout.split() == [image]
    assert (other / image.lstrip("/")).is_file()

    # The same directory behind a plain static HTTP server is an http:// binary cache.
    with static_http_server(cache) as url:
        third = tmp_path / "third-store"
        run_tool(nix_command("copy", "--option", "trusted-public-keys", trusted, "--from", url, "--to", str(third),
                             package), cache_home=tmp_path / "xdg-cache")
        assert (third / package.lstrip("/")).exists()


def test_max_jobs_0_without_builders_answers_503_with_nix_s_refusal_and_serves_what_is_built(
    forge_factory: ForgeFactory, tmp_path: Path
) -> None:
    flake = fresh_flake(tmp_path)
    nix_out_path(f"path:{flake}", "hello.image")  # in the Nix store already: no build needed to serve it
    # Through the environment this time (the other tests pass --nix-option).
    forge = forge_factory("no-jobs", flake=f"path:{flake}", extra_env={"NIXFORGE_NIX_OPTIONS": "max-jobs=0"})

    for _ in range(2):  # not remembered as a failed build: each pull asks Nix again
        answer = forge.get("/v2/chatty/manifests/latest", {"Accept": OCI_ACCEPT})
        assert answer.status == 503, (answer.status, answer.body[:2000])
        assert answer.error_codes() == ["UNAVAILABLE"]
        assert answer.headers["retry-after"] == "30"
        assert REFUSAL in answer.json()["errors"][0]["detail"]["error"]
    assert len(forge.matching_lines(re.compile(re.escape(REFUSAL)))) >= 2
    assert not Path(out_path(flake, "chatty.image")).exists()

    forge.manifest("hello")


@pytest.mark.parametrize("scheme", ["ssh", "ssh-ng"])
def test_a_remote_builder_builds_the_image_and_its_output_comes_back(
    forge_factory: ForgeFactory, tmp_path: Path, scheme: str
) -> None:
    # Nix treats the host `localhost` as ssh without ssh: it runs the remote side itself (`nix-store
    # --serve` for ssh://, `nix-daemon --stdio` for ssh-ng://). The
    # builder's store is a store of its own under `builder` (a diverted store, so Nix builds there in
    # its sandbox, which needs the host's /bin, /usr, /lib and the awk of /etc/alternatives for these
    # fixtures' /bin/sh builders).
    flake = fresh_flake(tmp_path)
    builder = tmp_path / "builder"
    machine = f"{scheme}://localhost?remote-store=local?root={builder} {SYSTEM} - 1 1"
    forge = forge_factory(
        "remote", flake=f"path:{flake}",
        extra_args=["--nix-option", f"builders={machine}", "--nix-option", "max-jobs=0"],
        extra_env={"NIX_CONFIG": f"{OFFLINE_NIX_CONFIG}\nextra-sandbox-paths = {SANDBOX_PATHS}"},
    )

    forge.manifest("chatty")
    image, package = out_path(flake, "chatty.image"), out_path(flake, "chatty")
    for path in (image, package):
        assert (builder / path.lstrip("/")).exists(), f"{path} was not built in the builder's store"
        assert Path(path).exists(), f"{path} did not come back to the local store"
        built_on = rf"building '/nix/store/\S+-{re.escape(Path(path).name.split('-', 1)[1])}\.drv' on '{scheme}://localhost"
        assert forge.matching_lines(re.compile(built_on)), built_on
