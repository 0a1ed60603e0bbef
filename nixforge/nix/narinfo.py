"""Nix binary cache documents: nixbase32, the narinfo text and its signed fingerprint."""

from __future__ import annotations

import re

from attrs import frozen

# Nix's own base32 alphabet (no e, o, t, u); the last character holds the lowest bits.
_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
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


def nix_hash(raw: bytes) -> str:
    """`sha256:<base32>`, the form narinfo files use."""
    return "sha256:" + to_base32(raw)


def hash_part(store_path: str) -> str:
    """The 32-character hash of `/nix/store/<hash>-<name>`."""
    return store_path.removeprefix(STORE_DIR + "/")[:32]


def nar_file_name(file_sha256: bytes) -> str:
    """The NAR's file name under `nar/`: its compressed file's SHA-256 in hex (its blob digest), `.nar.xz`.

    Nix reads the name from the narinfo's URL and checks the file against FileHash, whatever the name.
    """
    return file_sha256.hex() + NAR_SUFFIX


def file_sha256(file_name: str) -> bytes:
    """The inverse of `nar_file_name`; ValueError for any other name."""
    digits = file_name.removesuffix(NAR_SUFFIX)
    if digits == file_name or not _HEX.fullmatch(digits):
        raise ValueError(f"not a NAR file name: {file_name!r}")
    return bytes.fromhex(digits)


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
