"""The settings for building on other machines (docs/nix-builders.md) reach every nix command nixforge runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import succeed

from nixforge.nix.client import NixClient
from nixforge.nix.nar_dump import start_dump
from nixforge.store.memory import MemoryBlobStore
from nixforge.tap import Options
from tests.nix.conftest import FakeProcessReactor

STORE_PATH = "/nix/store/9wjwqbgph9y45qk631kffpqsjh236qsb-ok-1"
KEY = "cache-1:kwkqUHsnq3C5XqQN4fvXX5gcTd0x5C8E6PlAO3NRbsY="
# What docs/nix-builders.md tells an operator to pass: the flags, then NIXFORGE_NIX_OPTIONS.
FLAGS = [
    "builders=ssh-ng://nix@builder-1.example x86_64-linux /etc/nixforge/builder_ed25519 4 2 big-parallel",
    "max-jobs=0",
    "builders-use-substitutes=true",
    "post-build-hook=/etc/nixforge/upload-to-cache",
]
ENVIRONMENT = f"substituters=http://cache.example:5000/nix-cache/;trusted-public-keys={KEY};" \
              f"extra-substituters=file:///mnt/nix-cache ssh-ng://nix@cache-2.example;extra-trusted-public-keys={KEY}"
EXPECTED = (
    ("substituters", "http://cache.example:5000/nix-cache/"),
    ("trusted-public-keys", KEY),
    ("extra-substituters", "file:///mnt/nix-cache ssh-ng://nix@cache-2.example"),
    ("extra-trusted-public-keys", KEY),
    ("builders", "ssh-ng://nix@builder-1.example x86_64-linux /etc/nixforge/builder_ed25519 4 2 big-parallel"),
    ("max-jobs", "0"),
    ("builders-use-substitutes", "true"),
    ("post-build-hook", "/etc/nixforge/upload-to-cache"),
)


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[str, str], ...]:
    """The nix options of a configuration read from the twistd flags and the environment."""
    monkeypatch.setenv("NIXFORGE_NIX_OPTIONS", ENVIRONMENT)
    options = Options()
    argv = ["--port", "tcp:0:interface=127.0.0.1", "--data-dir", str(tmp_path / "data")]
    for flag in FLAGS:
        argv += ["--nix-option", flag]
    options.parseOptions(argv)
    return options.config.nix_options


def option_pairs(argv: list[str]) -> tuple[tuple[str, str], ...]:
    """The `--option NAME VALUE` pairs of an argv, in order, each before the `--` that ends the flags."""
    end = argv.index("--")
    at = [i for i, word in enumerate(argv) if word == "--option"]
    assert all(i + 2 < end for i in at), argv
    return tuple((argv[i + 1], argv[i + 2]) for i in at)


def test_flags_and_environment_give_the_options_whole_and_in_order(configured: tuple[tuple[str, str], ...]) -> None:
    # Values keep their spaces, `=`, `?` and `@`: only the first `=` splits NAME from VALUE.
    assert configured == EXPECTED


def test_several_builders_in_one_flag_must_go_through_a_machines_file() -> None:
    # `;` separates options in NIXFORGE_NIX_OPTIONS and --nix-option, so a `builders` list with `;`
    # is refused at start-up; `builders=@/etc/nix/machines` (one machine a line) is the way.
    with pytest.raises(Exception, match="not NAME=VALUE"):
        Options().opt_nix_option("builders=ssh://a x86_64-linux; ssh://b aarch64-linux")
    options = Options()
    options.opt_nix_option("builders=@/etc/nixforge/machines")
    assert options["nix-options"] == [("builders", "@/etc/nixforge/machines")]


def test_every_nix_command_carries_every_option(
    configured: tuple[tuple[str, str], ...], fake_reactor: FakeProcessReactor
) -> None:
    client = NixClient(fake_reactor, timeout=30, options=configured, setsid=None)
    client.build("path:/f#hello", out_link="/data/gcroots/b")
    client.eval_json("path:/f#hello", apply="x: x")
    client.closure(STORE_PATH)
    client.path_info(STORE_PATH)
    client.metadata("path:/f", refresh=True)
    store = MemoryBlobStore()
    start_dump(fake_reactor, client, STORE_PATH, store.writer(), lambda f, *a, **k: succeed(f(*a, **k)))
    commands = [process.args for process in fake_reactor.processes]
    assert [argv[1:3] for argv in commands] == [
        ["build", "--json"], ["eval", "--json"], ["path-info", "-r"], ["path-info", "--json"],
        ["flake", "metadata"], ["store", "dump-path"],
    ]
    for argv in commands:
        assert option_pairs(argv) == EXPECTED, argv
        assert argv[-1] in ("path:/f#hello", STORE_PATH, "path:/f")


def test_the_nix_environment_is_passed_whole(fake_reactor: FakeProcessReactor) -> None:
    # A post-build hook and a remote builder's ssh run as children of nix: they get nix's environment
    # (HOME for ~/.ssh, SSH_AUTH_SOCK, NIX_CONFIG), which is the registry's plus the client's `env`.
    env: dict[str, Any] = {"SSH_AUTH_SOCK": "/run/nixforge/agent.sock"}
    client = NixClient(fake_reactor, timeout=30, env=env, setsid=None)
    client.build("path:/f#hello")
    (process,) = fake_reactor.processes
    assert process.env["SSH_AUTH_SOCK"] == "/run/nixforge/agent.sock"
    assert "PATH" in process.env
