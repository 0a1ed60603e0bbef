"""nixbase32, NAR hash forms, the narinfo text and its ed25519 signature, checked against Nix's own tools."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nixforge.nix.narinfo import NarInfo, file_sha256, nar_file_name, nix_hash, parse_narinfo, to_base32
from nixforge.nix.signing import CacheKey, KeyInvalid

X_SHA256 = hashlib.sha256(b"x").digest()
X_BASE32 = "10a83a91g1r50bdw8g4hn47m7j7m6angpabwc80l9c16nx11cw9d"  # nix-hash --type sha256 --flat --base32
A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"


def test_base32_is_nix_hashs() -> None:
    assert to_base32(X_SHA256) == X_BASE32


def test_base32_agrees_with_nix_hash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(bytes(range(256)) * 10)
    printed = subprocess.run(["nix-hash", "--type", "sha256", "--flat", "--base32", str(data)], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert to_base32(hashlib.sha256(data.read_bytes()).digest()) == printed


def test_nar_file_names_round_trip() -> None:
    assert nar_file_name(X_SHA256) == X_SHA256.hex() + ".nar.xz"
    assert file_sha256(nar_file_name(X_SHA256)) == X_SHA256
    for bad in (X_SHA256.hex() + ".nar.bz2", X_BASE32 + ".nar.xz", "../x.nar.xz", ".nar.xz"):
        with pytest.raises(ValueError):
            file_sha256(bad)


def test_narinfo_fields_and_signature(tmp_path: Path) -> None:
    subprocess.run(["nix-store", "--generate-binary-cache-key", "test-1", str(tmp_path / "sec"),
                    str(tmp_path / "pub")], check=True)
    key = CacheKey.load(str(tmp_path / "sec"))
    assert key.public() == (tmp_path / "pub").read_text().strip()
    info = NarInfo(A, X_SHA256, 10, X_SHA256, 20, (B, A), "/nix/store/dddddddddddddddddddddddddddddddd-a.drv")
    assert info.fingerprint() == f"1;{A};sha256:{X_BASE32};20;{A},{B}".encode()
    text = info.text(key.sign(info.fingerprint()))
    assert [line.split(":")[0] for line in text.splitlines()] == [
        "StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References", "Deriver",
        "Sig"]
    fields = parse_narinfo(text)
    assert fields["References"] == f"{A[11:]} {B[11:]}"
    assert fields["Deriver"] == "dddddddddddddddddddddddddddddddd-a.drv"
    assert fields["FileHash"] == nix_hash(X_SHA256) and fields["URL"] == f"nar/{X_SHA256.hex()}.nar.xz"
    name, signature = fields["Sig"].split(":", 1)
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public().split(":", 1)[1]))
    assert name == "test-1"
    public.verify(base64.b64decode(signature), info.fingerprint())  # raises when wrong


def test_a_narinfo_without_deriver_has_no_deriver_line() -> None:
    assert "Deriver" not in NarInfo(A, X_SHA256, 1, X_SHA256, 1, ()).text("k:s")


@pytest.mark.parametrize("text", ["", "nocolon", "k:not base64!", "k:" + base64.b64encode(b"short").decode(),
                                  "k:" + base64.b64encode(bytes(64)).decode()])
def test_bad_keys_are_refused(text: str) -> None:
    with pytest.raises(KeyInvalid):
        CacheKey.parse(text)
