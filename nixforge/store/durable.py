"""Durable small-file writes: temp file, fsync, atomic rename, fsync of the directory."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator

from nixforge.errors import StoreFull

_FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_RETRY_AFTER = 30
"""Seconds a client is told to wait when the store is full (GC runs meanwhile)."""


@contextlib.contextmanager
def full_is_store_full() -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into StoreFull (503 for the client); other errors pass unchanged."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL:
            raise StoreFull("the blob store is full; retry after garbage collection",
                            retry_after=FULL_RETRY_AFTER, detail={"error": os.strerror(error.errno)}) from error
        raise


def fsync_directory(path: str) -> None:
    """Make a rename or unlink inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, temp_prefix: str = ".tmp-") -> None:
    """Atomically replace `path` with `data`: readers see the old or the new file, never a part.

    The temporary file lives beside `path` (same filesystem) and is removed if anything fails;
    a full disk raises StoreFull.
    """
    directory = os.path.dirname(path)
    with full_is_store_full():
        fd, temp_path = tempfile.mkstemp(prefix=temp_prefix, dir=directory)
    try:
        with full_is_store_full(), os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    fsync_directory(directory)
