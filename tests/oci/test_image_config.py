"""The customisation layer and the image config of closure images."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from nixforge.oci import image_config
from nixforge.oci.image_config import choose_command, host_platform, write_customisation_layer

IMAGE_PKG = "/nix/store/" + "p" * 32 + "-pkg"


def package(root: Path, programs: dict[str, int], dirs: tuple[str, ...] = ()) -> Path:
    """A fake package output with `bin/<name>` files of the given modes and extra top-level dirs."""
    out = root / ("p" * 32 + "-pkg")
    (out / "bin").mkdir(parents=True)
    for name, mode in programs.items():
        (out / "bin" / name).write_text("#!/bin/sh\n")
        (out / "bin" / name).chmod(mode)
    for directory in dirs:
        (out / directory).mkdir(parents=True, exist_ok=True)
        (out / directory / "item").write_text("x\n")
    return out


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        return {m.name: m for m in archive.getmembers()}


def custom_layer(out: Path) -> bytes:
    sink = io.BytesIO()
    write_customisation_layer(sink, str(out), IMAGE_PKG)
    return sink.getvalue()


def test_customisation_layer_links_like_buildenv_and_adds_users_and_tmp(tmp_path: Path) -> None:
    out = package(tmp_path, {"hello": 0o755, "helper": 0o755}, ("share/man", "lib", "nix-support", "etc"))
    (out / "etc" / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    (out / "lib64").symlink_to("lib")
    data = custom_layer(out)
    entries = members(data)
    assert list(entries) == sorted(entries, key=str.encode)
    assert entries["bin"].isdir() and entries["bin"].mode == 0o755
    assert entries["bin/hello"].issym() and entries["bin/hello"].linkname == f"{IMAGE_PKG}/bin/hello"
    assert entries["share/man"].linkname == f"{IMAGE_PKG}/share/man"
    assert entries["lib/item"].linkname == f"{IMAGE_PKG}/lib/item"
    assert entries["lib64"].issym() and entries["lib64"].linkname == f"{IMAGE_PKG}/lib64"
    assert entries["etc/item"].linkname == f"{IMAGE_PKG}/etc/item"
    assert not any(name.startswith("nix-support") for name in entries)
    assert entries["tmp"].isdir() and entries["tmp"].mode == 0o1777
    assert entries["etc/passwd"].isfile() and entries["etc/passwd"].mode == 0o644
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        passwd = archive.extractfile("etc/passwd").read().decode()
        group = archive.extractfile("etc/group").read().decode()
    assert passwd.startswith("root:x:0:0:") and "nobody:x:65534:65534:" in passwd
    assert group == "root:x:0:\nnobody:x:65534:\n"
    for member in entries.values():
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (1, 0, 0, "", "")
    assert custom_layer(out) == data


def test_a_package_without_directories_still_gets_etc_and_tmp(tmp_path: Path) -> None:
    out = tmp_path / ("p" * 32 + "-pkg")
    out.write_text("#!/bin/sh\n")
    assert sorted(members(custom_layer(out))) == ["etc", "etc/group", "etc/passwd", "tmp"]


@pytest.mark.parametrize(
    ("programs", "main", "expected"),
    [
        ({"hello": 0o755, "other": 0o755}, "other", ([f"{IMAGE_PKG}/bin/other"], None)),
        ({"hello": 0o755, "other": 0o755}, "missing", ([f"{IMAGE_PKG}/bin/pkg"], None)),
        ({"only": 0o755, "data.txt": 0o644}, None, ([f"{IMAGE_PKG}/bin/only"], None)),
        ({"a": 0o755, "pkg": 0o755}, None, ([f"{IMAGE_PKG}/bin/pkg"], None)),
        ({"a": 0o755, "sh": 0o755}, None, (None, ["/bin/sh"])),
        ({"a": 0o755, "b": 0o755}, None, (None, None)),
        ({}, None, (None, None)),
    ],
)
def test_entrypoint_choice(
    tmp_path: Path, programs: dict[str, int], main: str | None, expected: tuple[object, object]
) -> None:
    out = package(tmp_path, programs)
    if main == "missing":
        (out / "bin" / "pkg").write_text("#!/bin/sh\n")
        (out / "bin" / "pkg").chmod(0o555)
    assert choose_command(str(out), IMAGE_PKG, "pkg", main) == expected


def test_a_symlinked_program_counts_and_a_single_file_package_is_its_own_entrypoint(tmp_path: Path) -> None:
    out = package(tmp_path, {})
    (out / "bin" / "python").symlink_to("python3.11")
    assert choose_command(str(out), IMAGE_PKG, "pkg", None) == ([f"{IMAGE_PKG}/bin/python"], None)
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o555)
    assert choose_command(str(script), "/nix/store/x-script", "script", None) == (["/nix/store/x-script"], None)


def test_config_document() -> None:
    document = image_config.image_config(
        ["sha256:" + "1" * 64, "sha256:" + "2" * 64],
        IMAGE_PKG,
        [f"{IMAGE_PKG}/bin/hello"],
        None,
        {"org.opencontainers.image.revision": "abc"},
        "/nix/store/x-cacert/etc/ssl/certs/ca-bundle.crt",
        ("linux", "arm64"),
    )
    assert document == {
        "architecture": "arm64",
        "os": "linux",
        "created": "1970-01-01T00:00:01Z",
        "config": {
            "Env": [f"PATH=/bin:{IMAGE_PKG}/bin", "SSL_CERT_FILE=/nix/store/x-cacert/etc/ssl/certs/ca-bundle.crt"],
            "Entrypoint": [f"{IMAGE_PKG}/bin/hello"],
            "Labels": {"org.opencontainers.image.revision": "abc"},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64, "sha256:" + "2" * 64]},
    }


@pytest.mark.parametrize(("machine", "arch"), [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64")])
def test_host_platform_maps_machine_names(monkeypatch: pytest.MonkeyPatch, machine: str, arch: str) -> None:
    monkeypatch.setattr(image_config.platform, "machine", lambda: machine)
    monkeypatch.setattr(image_config.platform, "system", lambda: "Linux")
    assert host_platform() == ("linux", arch)
