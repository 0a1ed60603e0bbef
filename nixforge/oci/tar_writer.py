"""Deterministic, streaming tar (PAX) of store paths: sorted entries, fixed metadata, no host values.

Every entry has mtime 1 (as Nix gives store files), uid/gid 0, empty user and group names and a
mode normalised the way the Nix store has it: directories 0555, files 0444 or 0555 (any executable
bit kept as all three), symlinks 0777 with their target unchanged. Entries are sorted byte-wise on
their names, so parents precede children and equal inputs give equal bytes. PAX extended headers
appear only where ustar cannot hold a value (long or non-ASCII names and link targets, files of
8 GiB or more) and carry only those values. Two names of one inode within one store path become a
file and a hard-link entry to it (the first name in sort order holds the data). File contents are
streamed in chunks, never held whole in memory. A `cancel` event, checked before every entry and
every chunk, interrupts the archive (BuildCancelled) so a stopping registry never waits for it.

Hard links across store paths come from store optimisation (`auto-optimise-store`), which is host
state: they are written as separate files, so a layer does not depend on whether its host optimised
its store. (Optimisation can also link identical files inside one path; such a layer still differs.)
"""

from __future__ import annotations

import os
import stat
import tarfile
import threading
from collections.abc import Iterable
from typing import Protocol

from nixforge.errors import BuildCancelled

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
MTIME = 1
DEFAULT_STORE_DIR = "/nix/store"
IMAGE_STORE_DIR = "nix/store"
CHUNK = 1 << 20


class Sink(Protocol):
    """A file-like object that consumes the bytes passed to `write` before returning."""

    def write(self, data: bytes, /) -> object: ...


def store_mode(st_mode: int) -> int:
    """Return the permission bits a store entry gets in the tar (Nix store normal form)."""
    if stat.S_ISLNK(st_mode):
        return 0o777
    if stat.S_ISDIR(st_mode) or st_mode & 0o111:
        return 0o555
    return 0o444


class TarStream:
    """Write tar entries with fixed metadata into `sink`; `close` writes the end-of-archive marker."""

    def __init__(self, sink: Sink, chunk_size: int = CHUNK, cancel: threading.Event | None = None) -> None:
        self._sink = sink
        self._cancel = cancel
        self._offset = 0
        self._buffer = bytearray(max(BLOCK, chunk_size))
        self._closed = False

    def check_cancelled(self) -> None:
        """Raise BuildCancelled when the cancel event is set."""
        if self._cancel is not None and self._cancel.is_set():
            raise BuildCancelled("image assembly cancelled: the registry is stopping")

    def _write(self, data: bytes | memoryview) -> None:
        self._sink.write(data)
        self._offset += len(data)

    def _header(self, name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.size = size
        info.linkname = linkname
        info.mtime = MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        remainder = size % BLOCK
        if remainder:
            self._write(bytes(BLOCK - remainder))

    def add_directory(self, name: str, mode: int = 0o555) -> None:
        """Add a directory entry (`name` without a trailing slash)."""
        self._header(name, tarfile.DIRTYPE, mode)

    def add_symlink(self, name: str, target: str) -> None:
        """Add a symbolic link whose target is stored unchanged."""
        self._header(name, tarfile.SYMTYPE, 0o777, linkname=target)

    def add_hardlink(self, name: str, target: str) -> None:
        """Add a hard link to an earlier entry `target` of this archive."""
        self._header(name, tarfile.LNKTYPE, 0o444, linkname=target)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o444) -> None:
        """Add a small regular file from memory."""
        self._header(name, tarfile.REGTYPE, mode, size=len(data))
        self._write(data)
        self._pad(len(data))

    def add_file(self, name: str, host_path: str | bytes, size: int, mode: int) -> None:
        """Add a regular file of `size` bytes, streaming its content from `host_path` in chunks."""
        self._header(name, tarfile.REGTYPE, mode, size=size)
        view = memoryview(self._buffer)
        left = size
        with open(host_path, "rb", buffering=0) as source:
            while left:
                self.check_cancelled()
                count = source.readinto(view[: min(left, len(view))])
                if not count:
                    raise OSError(f"{os.fsdecode(host_path)!r} shrank while being archived")
                self._write(view[:count])
                left -= count
        self._pad(size)

    def close(self) -> None:
        """Write two zero blocks and pad to a whole record, as tar does. Idempotent."""
        if not self._closed:
            self._closed = True
            self._write(bytes(2 * BLOCK))
            remainder = self._offset % RECORD
            if remainder:
                self._write(bytes(RECORD - remainder))

    @property
    def offset(self) -> int:
        """Bytes written so far."""
        return self._offset


def _tree(root: bytes) -> list[tuple[bytes, os.stat_result]]:
    """All entries under `root` (itself as b""), relative names, unsorted; symlinks not followed."""
    top = os.lstat(root)
    found = [(b"", top)]
    pending = [b""] if stat.S_ISDIR(top.st_mode) else []
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative) if relative else root) as entries:
            for entry in entries:
                name = os.path.join(relative, entry.name) if relative else entry.name
                info = entry.stat(follow_symlinks=False)
                found.append((name, info))
                if stat.S_ISDIR(info.st_mode):
                    pending.append(name)
    return found


def image_name(store_path: str, store_dir: str = DEFAULT_STORE_DIR) -> str:
    """Return a store path's base name, checking it lies directly in `store_dir`."""
    parent, base = os.path.split(store_path.rstrip("/"))
    if os.path.normpath(parent) != os.path.normpath(store_dir) or base in ("", ".", ".."):
        raise ValueError(f"{store_path!r} is not a store path in {store_dir!r}")
    return base


def write_store_paths(
    sink: Sink, paths: Iterable[str], store_dir: str = DEFAULT_STORE_DIR, chunk_size: int = CHUNK,
    cancel: threading.Event | None = None,
) -> int:
    """Write the tar of `paths` (under `store_dir`) as `nix/store/<base>/...` into `sink`.

    The archive holds `nix/`, `nix/store/` and every entry of every path, sorted byte-wise.
    Returns the uncompressed tar size. Blocking: call it from a worker thread. Setting `cancel`
    makes it raise BuildCancelled before the next entry or chunk.
    """
    tar = TarStream(sink, chunk_size, cancel)
    tar.add_directory("nix")
    tar.add_directory(IMAGE_STORE_DIR)
    entries: list[tuple[bytes, bytes, os.stat_result, bytes]] = []
    for base in {os.fsencode(image_name(path, store_dir)) for path in paths}:
        root = os.path.join(os.fsencode(store_dir), base)
        prefix = os.fsencode(IMAGE_STORE_DIR) + b"/" + base
        for relative, info in _tree(root):
            name = prefix + b"/" + relative if relative else prefix
            entries.append((name, os.path.join(root, relative) if relative else root, info, base))
    entries.sort(key=lambda entry: entry[0])
    # Hard links are kept within one store path only: links across paths are what `nix-store
    # --optimise` makes on some machines, and would make a layer's bytes depend on the machine.
    first_name: dict[tuple[bytes, int, int], str] = {}
    for raw_name, host, info, base in entries:
        tar.check_cancelled()
        name = os.fsdecode(raw_name)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            tar.add_directory(name, store_mode(mode))
        elif stat.S_ISLNK(mode):
            tar.add_symlink(name, os.fsdecode(os.readlink(host)))
        elif stat.S_ISREG(mode):
            inode = (base, info.st_dev, info.st_ino)
            if info.st_nlink > 1 and inode in first_name:
                tar.add_hardlink(name, first_name[inode])
                continue
            if info.st_nlink > 1:
                first_name[inode] = name
            tar.add_file(name, host, info.st_size, store_mode(mode))
        else:
            raise ValueError(f"{os.fsdecode(host)!r}: sockets, fifos and devices cannot be archived")
    tar.close()
    return tar.offset
