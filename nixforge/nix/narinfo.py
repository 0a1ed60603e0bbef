"""Nix binary cache documents: nixbase32, NAR hashes, the narinfo text and its signed fingerprint."""

from __future__ import annotations

import base64
import binascii
import re

from attrs import frozen

# Nix's own base32 alphabet (no e, o, t, u); the last character holds the lowest bits.
_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_SHA256_BYTES = 32
_SHA256_BASE32 = 52  # ceil(256 / 5)
_HEX = re.compile(r"[0-9a-f]{64}")
STORE_DIR = "/nix/store"
CACHE_INFO = f"StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: 40\n"
COMPRESSION = "xz"
NAR_SUFFIX = ".nar.xz"


def to_base32(raw: bytes) -> str:
    """Nix's base32 of `raw` (as `nix-hash --to-base32` writes a hash)."""
    value = int.from_bytes(raw, "little")
    length = (len(raw) * 8 + 4) // 5
    return "".join(_ALPHABET[(value >> (5 * position)) & 31] for position in reversed(range(length)))


def from_base32(text: str, size: int = _SHA256_BYTES) -> bytes:
    """Decode Nix's base32 of `size` bytes; ValueError when `text` is not one."""
    if len(text) != (size * 8 + 4) // 5:
        raise ValueError(f"not a base32 hash of {size} bytes: {text!r}")
    value = 0
    for position, char in enumerate(reversed(text)):
        digit = _ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"not a Nix base32 character: {char!r}")
        value |= digit << (5 * position)
    if value >> (8 * size):
        raise ValueError("base32 hash has bits beyond its size")
    return value.to_bytes(size, "little")


def sha256_bytes(nar_hash: str) -> bytes:
    """The 32 bytes of a SHA-256 as Nix prints it: `sha256:<base32|hex>` or SRI `sha256-<base64>`."""
    if nar_hash.startswith("sha256-"):
        try:
            raw = base64.b64decode(nar_hash[len("sha256-"):], validate=True)
        except binascii.Error as error:
            raise ValueError(f"bad base64 in {nar_hash!r}") from error
        if len(raw) != _SHA256_BYTES:
            raise ValueError(f"not a sha256: {nar_hash!r}")
        return raw
    if nar_hash.startswith("sha256:"):
        digits = nar_hash[len("sha256:"):]
        return bytes.fromhex(digits) if _HEX.fullmatch(digits) else from_base32(digits)
    raise ValueError(f"not a sha256 hash: {nar_hash!r}")


def nix_hash(raw: bytes) -> str:
    """`sha256:<base32>`, the form narinfo files use."""
    return "sha256:" + to_base32(raw)


def hash_part(store_path: str) -> str:
    """The 32-character hash of `/nix/store/<hash>-<name>`."""
    return store_path.removeprefix(STORE_DIR + "/")[:32]


def nar_file_name(file_sha256: bytes) -> str:
    """The NAR's file name under `nar/`: its compressed file's hash in base32, then `.nar.xz`."""
    return to_base32(file_sha256) + NAR_SUFFIX


def file_sha256(file_name: str) -> bytes:
    """The inverse of `nar_file_name`; ValueError for any other name."""
    if not file_name.endswith(NAR_SUFFIX):
        raise ValueError(f"not a NAR file name: {file_name!r}")
    return from_base32(file_name[: -len(NAR_SUFFIX)])


@frozen
class NarInfo:
    """What a narinfo says of one store path; `text(signature)` writes it with its `Sig` line."""

    store_path: str
    file_sha256: bytes
    file_size: int
    nar_sha256: bytes
    nar_size: int
    references: tuple[str, ...]
    deriver: str | None = None

    def fingerprint(self) -> bytes:
        """`1;<path>;<narHash>;<narSize>;<references>`: what the signature signs (Nix's order)."""
        refs = ",".join(sorted(self.references))
        return f"1;{self.store_path};{nix_hash(self.nar_sha256)};{self.nar_size};{refs}".encode()

    def text(self, signature: str) -> str:
        """The narinfo file: the exact fields Nix reads, references and deriver by base name."""
        lines = [
            f"StorePath: {self.store_path}",
            f"URL: nar/{nar_file_name(self.file_sha256)}",
            f"Compression: {COMPRESSION}",
            f"FileHash: {nix_hash(self.file_sha256)}",
            f"FileSize: {self.file_size}",
            f"NarHash: {nix_hash(self.nar_sha256)}",
            f"NarSize: {self.nar_size}",
            "References: " + " ".join(sorted(_base(ref) for ref in self.references)),
        ]
        if self.deriver:
            lines.append(f"Deriver: {_base(self.deriver)}")
        lines.append(f"Sig: {signature}")
        return "\n".join(lines) + "\n"


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def parse_narinfo(text: str) -> dict[str, str]:
    """The `Key: value` fields of a narinfo (the last of a repeated key wins)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key] = value
    return fields
