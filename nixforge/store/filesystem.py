"""The on-disk blob store: `<root>/blobs/sha256/<hex>`, written via `<root>/tmp/`, published atomically."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from twisted.logger import Logger
from zope.interface import implementer

from nixforge.errors import BlobUnknown, DigestInvalid
from nixforge.store.blob_writing import HashingTempFile, blob_hex
from nixforge.store.durable import fsync_directory, full_is_store_full
from nixforge.store.interfaces import IBlobWriter, ICollectableBlobStore
from nixforge.store.leases import BlobLeases

log = Logger()

_TEMP_PREFIX = "blob-"
_BLOB_MODE = 0o444
@implementer(IBlobWriter)
class FilesystemBlobWriter(HashingTempFile):
    """Stream bytes into a locked temporary file, hashing them; `commit` publishes the blob.

    The temporary file holds an exclusive `flock` for its whole life, so a store starting up
    (possibly another replica sharing the root) can tell a live write from a crashed one.
    """

    def __init__(self, store: FilesystemBlobStore) -> None:
        self._store = store
        super().__init__(*self._create_locked_temp())

    def _create_locked_temp(self) -> tuple[BinaryIO, str]:
        """Create and lock a unique temp file, retrying if a start-up cleanup unlinked it first."""
        while True:
            fd, temp_path = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self._store.temp_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                return os.fdopen(fd, "wb"), temp_path
            os.close(fd)

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        """Fsync, verify, then atomically publish the blob; return `(digest, size)`."""
        digest = self._digest()
        try:
            with full_is_store_full():
                self._file.flush()
                os.fsync(self._file.fileno())
            if expected_digest is not None and expected_digest != digest:
                raise DigestInvalid(
                    "blob content does not match its digest",
                    {"expected": str(expected_digest)[:200], "actual": digest},
                )
            os.chmod(self._temp_path, _BLOB_MODE)
            final = self._store.path(digest)
            with self._store.leases.lock:
                published = self._store.stat_size(digest) != self._size
                if published:
                    os.replace(self._temp_path, final)
                else:
                    os.unlink(self._temp_path)
                self._store.leases.touch_locked(digest)
            if published:
                fsync_directory(os.path.dirname(final))
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._file.close()
        return digest, self._size


@implementer(ICollectableBlobStore)
class FilesystemBlobStore:
    """Blobs as read-only files under `root`; every method blocks (run it off the reactor)."""

    def __init__(self, root: str) -> None:
        self.leases = BlobLeases()
        self.root = os.path.abspath(root)
        self.blob_dir = os.path.join(self.root, "blobs", "sha256")
        self.temp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.blob_dir, exist_ok=True)
        os.makedirs(self.temp_dir, exist_ok=True)
        self.remove_abandoned()

    def path(self, digest: str) -> str:
        """Return the file path of blob `digest` (present or not); DigestInvalid if not sha256."""
        hex_digest = blob_hex(digest)
        if hex_digest is None:
            raise DigestInvalid("not a sha256 digest", {"digest": str(digest)[:200]})
        return os.path.join(self.blob_dir, hex_digest)

    def remove_abandoned(self) -> int:
        """Delete temp files no live writer holds (left by a crash); return how many went."""
        removed = 0
        with os.scandir(self.temp_dir) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    log.warn("leaving non-file {path} in the temp directory", path=entry.path)
                    continue
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(entry.path)
                    removed += 1
                except (BlockingIOError, FileNotFoundError):
                    pass  # a live writer holds it, or it just went away
                finally:
                    os.close(fd)
        if removed:
            fsync_directory(self.temp_dir)
            log.info("removed {count} stale temporary blob files", count=removed)
        return removed

    def size(self, digest: str) -> int | None:
        """Return the blob's size, or None when absent; a present blob counts as in use (leases)."""
        with self.leases.lock:
            size = self.stat_size(digest)
            if size is not None:
                self.leases.touch_locked(digest)
            return size

    def stat_size(self, digest: str) -> int | None:
        """Return the blob's size, or None when absent or not a sha256 digest; touches nothing."""
        if blob_hex(digest) is None:
            return None
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return None

    def digests(self) -> Iterator[tuple[str, int]]:
        """Yield `(digest, size)` of every stored blob (files with other names are skipped)."""
        with os.scandir(self.blob_dir) as entries:
            for entry in entries:
                digest = "sha256:" + entry.name
                if blob_hex(digest) is None or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    yield digest, entry.stat(follow_symlinks=False).st_size

    def delete(self, digest: str, floor: int) -> int | None:
        """Unlink blob `digest` unless touched at or after `floor`; return the bytes freed, or None.

        Unlinking leaves a reader's open file readable to its end; a blob is never truncated.
        """
        with self.leases.unless_protected(digest, floor) as may_go:
            if not may_go:
                return None
            size = self.stat_size(digest)
            if size is None:
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(digest))
            return size

    def open(self, digest: str) -> BinaryIO:
        """Open the blob for reading; BlobUnknown when absent or not a sha256 digest."""
        if blob_hex(digest) is None:
            raise BlobUnknown("blob unknown to registry", {"digest": str(digest)[:200]})
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobUnknown("blob unknown to registry", {"digest": digest}) from None

    def read(self, digest: str) -> bytes:
        """Return a small blob's bytes; BlobUnknown when absent."""
        with self.open(digest) as blob:
            return blob.read()

    def writer(self) -> FilesystemBlobWriter:
        """Start writing a new blob into a temporary file."""
        return FilesystemBlobWriter(self)

    def put(self, data: bytes) -> tuple[str, int]:
        """Store small bytes durably (idempotent); return `(digest, size)`."""
        writer = self.writer()
        writer.write(data)
        return writer.commit()
