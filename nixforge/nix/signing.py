"""The binary cache's ed25519 key, in the format of `nix-store --generate-binary-cache-key`.

`cryptography` (already pulled in by twisted[tls], maintained by the PyCA) does the ed25519 math:
no signing code of our own.
"""

from __future__ import annotations

import base64
import binascii

from attrs import frozen
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class KeyInvalid(ValueError):
    """The key file is not `<name>:<base64 of 64 bytes>`."""


@frozen
class CacheKey:
    """A named ed25519 secret key: signs narinfo fingerprints as `<name>:<base64 signature>`."""

    name: str
    key: Ed25519PrivateKey

    @classmethod
    def parse(cls, text: str) -> CacheKey:
        """Read `<name>:<base64(seed + public key)>`, as Nix writes a secret key file."""
        name, sep, encoded = text.strip().partition(":")
        if not sep or not name:
            raise KeyInvalid("a cache key is <name>:<base64>, as nix-store --generate-binary-cache-key writes it")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise KeyInvalid("the cache key is not base64") from None
        if len(raw) != 64:
            raise KeyInvalid(f"an ed25519 secret key has 64 bytes, this one {len(raw)}")
        key = Ed25519PrivateKey.from_private_bytes(raw[:32])
        if _public_bytes(key) != raw[32:]:
            raise KeyInvalid("the key's public half does not match its secret half")
        return cls(name, key)

    @classmethod
    def load(cls, path: str) -> CacheKey:
        """Read a secret key file (blocks: at start-up only)."""
        with open(path, encoding="utf-8") as file:
            return cls.parse(file.read())

    def sign(self, fingerprint: bytes) -> str:
        """The `Sig` value of a narinfo: `<name>:<base64 of the ed25519 signature>`."""
        return f"{self.name}:{base64.b64encode(self.key.sign(fingerprint)).decode()}"

    def public(self) -> str:
        """`<name>:<base64 public key>`: what Nix hosts put in `trusted-public-keys`."""
        return f"{self.name}:{base64.b64encode(_public_bytes(self.key)).decode()}"


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
