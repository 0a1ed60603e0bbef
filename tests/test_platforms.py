"""The host's Nix system and OCI platform, and the NIXFORGE_SYSTEMS list."""

from __future__ import annotations

import pytest

import nixforge.platforms as platforms
from nixforge.platforms import host_platform, host_system, parse_systems


@pytest.mark.parametrize("machine, system", [
    ("x86_64", "x86_64-linux"), ("AMD64", "x86_64-linux"), ("arm64", "aarch64-linux"), ("aarch64", "aarch64-linux"),
    ("i586", "i686-linux"), ("ppc64le", "powerpc64le-linux"),
])
def test_the_host_system_is_nix_cpu_and_os(monkeypatch: pytest.MonkeyPatch, machine: str, system: str) -> None:
    monkeypatch.setattr(platforms.host_machine, "machine", lambda: machine)
    monkeypatch.setattr(platforms.host_machine, "system", lambda: "Linux")
    assert host_system() == system


def test_a_system_nix_option_wins() -> None:
    assert host_system((("sandbox", "false"), ("system", "aarch64-linux"))) == "aarch64-linux"
    assert host_system((("system", ""),)) == host_system()


def test_the_host_platform_is_that_of_the_host_system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platforms.host_machine, "machine", lambda: "aarch64")
    monkeypatch.setattr(platforms.host_machine, "system", lambda: "Linux")
    platform = host_platform()
    assert platform is not None and (platform.os, platform.architecture) == ("linux", "arm64")
    monkeypatch.setattr(platforms.host_machine, "machine", lambda: "mips")
    assert host_platform() is None  # no OCI name for it


def test_systems_are_listed_once_each() -> None:
    assert parse_systems(" x86_64-linux ,aarch64-linux") == ("x86_64-linux", "aarch64-linux")
    with pytest.raises(ValueError, match="twice"):
        parse_systems("x86_64-linux,x86_64-linux")
