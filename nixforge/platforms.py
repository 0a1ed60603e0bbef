"""Nix systems and the host's own: which systems a registry builds for, and their OCI platforms."""

from __future__ import annotations

import platform as host_machine

from nixforge.oci.image_index import SYSTEM, Platform, platform_for

# platform.machine() → Nix's cpu name, where they differ.
_NIX_CPUS = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "i586": "i686", "ppc64le": "powerpc64le"}


def host_system(nix_options: tuple[tuple[str, str], ...] = ()) -> str:
    """The Nix system of this machine, e.g. x86_64-linux (what `builtins.currentSystem` says).

    A `system` Nix option (`--nix-option system=…`) is what Nix itself then builds for: it wins.
    """
    for name, value in nix_options:
        if name == "system" and value:
            return value
    machine = host_machine.machine().lower()
    return f"{_NIX_CPUS.get(machine, machine)}-{host_machine.system().lower()}"


def parse_systems(text: str) -> tuple[str, ...]:
    """Comma-separated Nix systems, each with an OCI platform, no repeats; empty means the host's."""
    if not text.strip():
        return (host_system(),)
    systems = tuple(item.strip() for item in text.split(","))
    for system in systems:
        if not SYSTEM.fullmatch(system):
            raise ValueError(f"{system!r} is not a Nix system such as x86_64-linux")
        platform_for(system)
    if len(set(systems)) != len(systems):
        raise ValueError("lists a system twice")
    return systems


def host_platform() -> Platform | None:
    """The OCI platform of the host's system, or None when it has no OCI name."""
    try:
        return platform_for(host_system())
    except ValueError:
        return None
