"""The Nix store paths a layer holds, read from its tar headers (gzip-compressed or plain)."""

from __future__ import annotations

import tarfile
from typing import BinaryIO

STORE_PREFIX = ("nix", "store")


def store_paths_in_layer(fileobj: BinaryIO, limit: int = 2000) -> list[str]:
    """The `/nix/store/<hash>-<name>` paths with entries in the layer, sorted, at most `limit` of them.

    Reads the tar as a stream (one pass, constant memory); a layer that is no tar gives tarfile.TarError.
    """
    paths: set[str] = set()
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            parts = [part for part in member.name.split("/") if part not in ("", ".")]
            if len(parts) >= 3 and tuple(parts[:2]) == STORE_PREFIX:
                paths.add("/nix/store/" + parts[2])
                if len(paths) >= limit:
                    break
    return sorted(paths)
