"""What every blob writer shares: a temporary file that hashes what goes in, and the sha256 digest grammar."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from typing import BinaryIO

from nixforge.store.durable import full_is_store_full

SHA256_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


def blob_hex(digest: str) -> str | None:
    """Return the hex part of a well-formed sha256 digest, or None for anything else."""
    if not isinstance(digest, str) or SHA256_DIGEST.fullmatch(digest) is None:
        return None
    return digest[len("sha256:"):]


class HashingTempFile:
    """Bytes appended to a temporary file and to a running sha256; a subclass's `commit` publishes them.

    Nothing is visible while it is written; `abort` (safe to call twice) closes and deletes the file.
    """

    def __init__(self, file: BinaryIO, temp_path: str) -> None:
        self._file = file
        self._temp_path = temp_path
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False

    def write(self, data: bytes) -> None:
        """Append bytes to the temporary file and to the running hash (StoreFull on a full disk)."""
        if self._done:
            raise ValueError("blob writer is already committed or aborted")
        try:
            with full_is_store_full():
                self._file.write(data)
        except BaseException:
            self.abort()
            raise
        self._hash.update(data)
        self._size += len(data)

    def _digest(self) -> str:
        """The digest of everything written, for `commit`; refuses a writer already done."""
        if self._done:
            raise ValueError("blob writer is already committed or aborted")
        return "sha256:" + self._hash.hexdigest()

    def abort(self) -> None:
        """Close and delete the temporary file; nothing becomes visible. Idempotent."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):  # closing flushes; on a full disk that fails again
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp_path)
