"""Durable small-file writes: temp file, fsync, atomic rename, fsync of the directory."""

from __future__ import annotations

import contextlib
import os
import tempfile


def fsync_directory(path: str) -> None:
    """Make a rename or unlink inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, temp_prefix: str = ".tmp-") -> None:
    """Atomically replace `path` with `data`: readers see the old or the new file, never a part.

    The temporary file lives beside `path` (same filesystem) and is removed if anything fails.
    """
    directory = os.path.dirname(path)
    fd, temp_path = tempfile.mkstemp(prefix=temp_prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    fsync_directory(directory)
