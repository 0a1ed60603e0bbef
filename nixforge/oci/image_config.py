"""The customisation layer (/bin links, /etc/passwd, /tmp) and the OCI config of a closure image."""

from __future__ import annotations

import os
import platform
import stat
from typing import Any

from nixforge.oci.tar_writer import TarStream

CREATED = "1970-01-01T00:00:01Z"
CA_BUNDLE = "etc/ssl/certs/ca-bundle.crt"
# Top-level names the customisation layer owns or that a runtime mounts over: never linked.
_RESERVED = frozenset({"nix", "nix-support", "tmp", "proc", "sys", "dev", "run"})
_OWN_ETC = {
    "passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/false\n",
    "group": b"root:x:0:\nnobody:x:65534:\n",
}
_ARCHITECTURES = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
    "i686": "386", "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_platform() -> tuple[str, str]:
    """Return the host's (OCI os, OCI architecture), e.g. ("linux", "amd64")."""
    machine = platform.machine().lower()
    return platform.system().lower(), _ARCHITECTURES.get(machine, machine)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path), key=os.fsencode)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _is_program(path: str) -> bool:
    """A bin/ entry counts as a program if it is an executable file or a symlink (to one, as a rule)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    return stat.S_ISLNK(mode) or (stat.S_ISREG(mode) and bool(mode & 0o111))


def root_links(package_host: str) -> dict[str, list[str]]:
    """Map each top-level directory to link (as buildEnv would) to the entries linked inside it.

    A top-level entry that is not a directory maps to an empty list and is linked itself.
    """
    links: dict[str, list[str]] = {}
    for top in _listdir(package_host):
        if top in _RESERVED:
            continue
        host = os.path.join(package_host, top)
        links[top] = _listdir(host) if _is_dir(host) else []
    if "etc" in links and not _is_dir(os.path.join(package_host, "etc")):
        del links["etc"]  # a non-directory etc cannot be merged with our passwd and group
    return links


def write_customisation_layer(sink: Any, package_host: str, package_image: str) -> None:
    """Write the top layer: buildEnv-style links into the package, /etc/passwd+group, /tmp (1777).

    `package_host` is where the package is readable now; `package_image` its path in the image.
    """
    entries: list[tuple[bytes, str, str]] = []  # (name, kind, payload)
    links = root_links(package_host)
    for top, inside in links.items():
        if _is_dir(os.path.join(package_host, top)):
            entries.append((os.fsencode(top), "dir", ""))
            for name in inside:
                if top == "etc" and name in _OWN_ETC:
                    continue
                entries.append((os.fsencode(f"{top}/{name}"), "link", f"{package_image}/{top}/{name}"))
        else:
            entries.append((os.fsencode(top), "link", f"{package_image}/{top}"))
    if "etc" not in links:
        entries.append((b"etc", "dir", ""))
    entries.extend((os.fsencode(f"etc/{name}"), "file", name) for name in _OWN_ETC)
    entries.append((b"tmp", "tmp", ""))
    tar = TarStream(sink)
    for raw, kind, payload in sorted(entries, key=lambda entry: entry[0]):
        name = os.fsdecode(raw)
        if kind == "dir":
            tar.add_directory(name, 0o755)
        elif kind == "tmp":
            tar.add_directory(name, 0o1777)
        elif kind == "link":
            tar.add_symlink(name, payload)
        else:
            tar.add_bytes(name, _OWN_ETC[payload], 0o644)
    tar.close()


def choose_command(
    package_host: str, package_image: str, name: str, main_program: str | None
) -> tuple[list[str] | None, list[str] | None]:
    """Return (Entrypoint, Cmd): meta.mainProgram, else the only program in bin/, else bin/<name>;
    with none of those, no Entrypoint and Cmd ["/bin/sh"] when the image has /bin/sh.
    """
    bin_host = os.path.join(package_host, "bin")
    if main_program and "/" not in main_program and _is_program(os.path.join(bin_host, main_program)):
        return [f"{package_image}/bin/{main_program}"], None
    programs = [entry for entry in _listdir(bin_host) if _is_program(os.path.join(bin_host, entry))]
    if len(programs) == 1:
        return [f"{package_image}/bin/{programs[0]}"], None
    if name in programs:
        return [f"{package_image}/bin/{name}"], None
    if _is_program(package_host) and not _is_dir(package_host):
        return [package_image], None  # the package is a single executable (writeScript and the like)
    if "sh" in programs:
        return None, ["/bin/sh"]
    return None, None


def image_config(
    diff_ids: list[str],
    package_image: str,
    entrypoint: list[str] | None,
    cmd: list[str] | None,
    labels: dict[str, str],
    ca_bundle: str | None = None,
    platform_pair: tuple[str, str] | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Return the OCI image config document (serialise it with `canonical_json`)."""
    os_name, architecture = platform_pair or host_platform()
    platform_keys = {"architecture": architecture, "os": os_name}
    if variant is not None:
        platform_keys["variant"] = variant
    env = [f"PATH=/bin:{package_image}/bin"]
    if ca_bundle:
        env.append(f"SSL_CERT_FILE={ca_bundle}")
    config: dict[str, Any] = {"Env": env}
    if entrypoint:
        config["Entrypoint"] = list(entrypoint)
    if cmd:
        config["Cmd"] = list(cmd)
    if labels:
        config["Labels"] = dict(labels)
    return {
        **platform_keys,
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
