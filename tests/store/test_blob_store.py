"""On-disk durability and safety of the filesystem blob store (its contract: test_blob_store_contract.py)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nixforge.errors import BlobUnknown, DigestInvalid
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.interfaces import IBlobStore
from nixforge.store.memory import MemoryBlobStore

REPO_ROOT = Path(__file__).resolve().parents[2]


def sha256(data: bytes) -> str:
    """Return the OCI digest of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def fs_root(tmp_path: Path) -> Path:
    """The root of a filesystem store (not created yet)."""
    return tmp_path / "store"


def temporaries(root: Path) -> list[str]:
    """List the filesystem store's temp directory."""
    return os.listdir(root / "tmp")


def blob_files(root: Path) -> list[str]:
    """List the published blob files."""
    return os.listdir(root / "blobs" / "sha256")


# The contract of every blob store is in test_blob_store_contract.py.


# Filesystem store only.


def test_filesystem_layout_and_mode(fs_root: Path) -> None:
    """Blobs live at blobs/sha256/<hex>, read-only, and no temporary remains."""
    store = FilesystemBlobStore(str(fs_root))
    digest, _ = store.put(b"layout")
    path = fs_root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert store.path(digest) == str(path)
    assert path.read_bytes() == b"layout"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert temporaries(fs_root) == []


def test_filesystem_failures_leave_no_temporaries(fs_root: Path) -> None:
    """Mismatched and aborted writes delete their temp files."""
    store = FilesystemBlobStore(str(fs_root))
    mismatched = store.writer()
    mismatched.write(b"x")
    aborted = store.writer()
    aborted.write(b"y")
    assert len(temporaries(fs_root)) == 2
    with pytest.raises(DigestInvalid):
        mismatched.commit(sha256(b"z"))
    aborted.abort()
    assert temporaries(fs_root) == []
    assert blob_files(fs_root) == []


def test_filesystem_second_write_keeps_file(fs_root: Path) -> None:
    """Re-putting a blob leaves the published file (same inode) alone."""
    store = FilesystemBlobStore(str(fs_root))
    digest, _ = store.put(b"once")
    inode = os.stat(store.path(digest)).st_ino
    with store.open(digest) as reader:
        store.put(b"once")
        assert reader.read() == b"once"
    assert os.stat(store.path(digest)).st_ino == inode
    assert temporaries(fs_root) == []


def test_filesystem_truncated_blob_is_replaced(fs_root: Path) -> None:
    """A published file of the wrong size (damaged) is replaced by a verified copy."""
    store = FilesystemBlobStore(str(fs_root))
    digest = sha256(b"complete content")
    Path(store.path(digest)).write_bytes(b"compl")
    store.put(b"complete content")
    assert store.read(digest) == b"complete content"


def test_filesystem_reopen_sees_blobs_and_cleans_temporaries(fs_root: Path) -> None:
    """A new store on the same root sees published blobs and removes stale temps."""
    store = FilesystemBlobStore(str(fs_root))
    digest, _ = store.put(b"durable")
    (fs_root / "tmp" / "blob-stale").write_bytes(b"left by a crash")
    reopened = FilesystemBlobStore(str(fs_root))
    assert reopened.read(digest) == b"durable"
    assert temporaries(fs_root) == []


def test_filesystem_reopen_spares_live_writer(fs_root: Path) -> None:
    """Start-up cleanup (say, of another replica) leaves an in-progress write alone."""
    store = FilesystemBlobStore(str(fs_root))
    writer = store.writer()
    writer.write(b"in flight")
    other = FilesystemBlobStore(str(fs_root))
    assert other.remove_abandoned() == 0
    assert len(temporaries(fs_root)) == 1
    digest, _ = writer.commit()
    assert other.read(digest) == b"in flight"


CRASHING_WRITER = """
import os, sys
from nixforge.store.filesystem import FilesystemBlobStore
writer = FilesystemBlobStore(sys.argv[1]).writer()
for _ in range(4):
    writer.write(b"x" * 65536)
os._exit(1)
"""


def test_filesystem_crash_before_commit(fs_root: Path) -> None:
    """A writer process killed before commit leaves no visible blob; reopening cleans its temp."""
    FilesystemBlobStore(str(fs_root))
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(fs_root)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    left = temporaries(fs_root)
    assert len(left) == 1
    assert (fs_root / "tmp" / left[0]).stat().st_size > 0
    assert blob_files(fs_root) == []
    reopened = FilesystemBlobStore(str(fs_root))
    assert temporaries(fs_root) == []
    assert blob_files(fs_root) == []
    assert reopened.size(sha256(b"x" * 4 * 65536)) is None


BAD_DIGESTS = [
    "sha256:../../../etc/passwd",
    "sha256:../../../secret",
    "sha256:/etc/passwd",
    "sha256:" + "AB" * 32,
    "sha256:" + "ab" * 32 + "\n",
    "sha512:" + "ab" * 64,
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_filesystem_bad_digests_touch_nothing(fs_root: Path, digest: str) -> None:
    """A malformed digest never maps to a file, even one planted where a naive join would look."""
    store = FilesystemBlobStore(str(fs_root))
    naive = Path(os.path.normpath(os.path.join(store.blob_dir, digest.split(":", 1)[1])))
    planted = naive != Path("/etc/passwd")
    if planted:
        naive.parent.mkdir(parents=True, exist_ok=True)
        naive.write_bytes(b"planted")
    assert naive.exists()
    assert store.size(digest) is None
    with pytest.raises(BlobUnknown):
        store.read(digest)
    with pytest.raises(BlobUnknown):
        store.open(digest)
    with pytest.raises(DigestInvalid):
        store.path(digest)
    writer = store.writer()
    writer.write(b"planted")
    with pytest.raises(DigestInvalid):
        writer.commit(digest)
    if planted:
        assert naive.read_bytes() == b"planted"
    assert temporaries(fs_root) == []
    assert store.size(sha256(b"planted")) is None


@pytest.mark.parametrize("make", [FilesystemBlobStore, lambda root: MemoryBlobStore()])
def test_digest_is_sha256_of_bytes(tmp_path: Path, make: Callable[[str], IBlobStore]) -> None:
    """The digest is the sha256 of the bytes (a known vector), whatever the store."""
    assert make(str(tmp_path / "store")).put(b"abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        3,
    )
