"""Nix's NAR hashes (`sha256:<base32>`, `sha256:<hex>`, SRI `sha256-<base64>`) as hex, for SBOM checksums."""

from __future__ import annotations

import base64
import binascii
import re

# Nix's own base32: this alphabet (no e, o, t, u), the last character encoding the lowest bits.
_NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
_SHA256_BYTES = 32
_BASE32_LENGTH = 52  # ceil(256 / 5)
_HEX = re.compile(r"[0-9a-f]{64}")


def _from_nix_base32(text: str) -> bytes:
    """Decode Nix's base32 of a 32-byte hash (as nix-hash --to-base32 writes it)."""
    if len(text) != _BASE32_LENGTH:
        raise ValueError(f"a base32 sha256 has {_BASE32_LENGTH} characters, not {len(text)}")
    value = 0
    for position, char in enumerate(reversed(text)):
        digit = _NIX_BASE32.find(char)
        if digit < 0:
            raise ValueError(f"not a Nix base32 character: {char!r}")
        value |= digit << (5 * position)
    if value >> (8 * _SHA256_BYTES):
        raise ValueError("base32 hash has bits beyond 256")
    return value.to_bytes(_SHA256_BYTES, "little")


def nar_hash_hex(nar_hash: str) -> str:
    """The SHA-256 of a NAR hash as Nix prints it, as 64 lowercase hex digits; ValueError otherwise."""
    if nar_hash.startswith("sha256-"):
        try:
            raw = base64.b64decode(nar_hash[len("sha256-"):], validate=True)
        except binascii.Error as error:
            raise ValueError(f"bad base64 in {nar_hash!r}") from error
        if len(raw) != _SHA256_BYTES:
            raise ValueError(f"not a sha256: {nar_hash!r}")
        return raw.hex()
    if nar_hash.startswith("sha256:"):
        digits = nar_hash[len("sha256:"):]
        if _HEX.fullmatch(digits):
            return digits
        return _from_nix_base32(digits).hex()
    raise ValueError(f"not a sha256 NAR hash: {nar_hash!r}")
