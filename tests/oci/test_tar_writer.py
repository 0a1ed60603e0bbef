"""Fidelity and determinism of the store-path tar writer, checked with the system `tar`."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from nixforge.oci.layer_writer import LayerWriter
from nixforge.oci.tar_writer import store_mode, write_store_paths
from nixforge.store.memory import MemoryBlobStore

BIG = 50 * 1024 * 1024


def make_store(root: Path) -> tuple[str, list[str]]:
    """A fake store with two paths covering every kind of entry the writer must keep."""
    store = root / "nix" / "store"
    main = store / ("a" * 32 + "-fidelity")
    dep = store / ("b" * 32 + "-dep")
    for directory in (main / "bin", main / "share" / "doc", main / "empty", dep, main / ("d" * 60) / ("e" * 60)):
        directory.mkdir(parents=True)
    (main / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (main / "bin" / "tool").chmod(0o755)
    (main / "share" / "doc" / "readme").write_text("read me\n")
    (main / "rel-link").symlink_to("share/doc/readme")
    (main / "abs-link").symlink_to(f"/nix/store/{dep.name}/data")
    (main / "dangling").symlink_to("does/not/exist")
    (main / "name with spaces.txt").write_text("spaces\n")
    (main / "café-日本.txt").write_text("non-ascii\n")
    (main / ("d" * 60) / ("e" * 60) / "long-name-file").write_text("long\n")
    (main / "data-1").write_bytes(b"linked twice\n")
    os.link(main / "data-1", main / "data-2")
    (dep / "data").write_bytes(b"dependency data\n")
    os.link(main / "bin" / "tool", dep / "tool-link")  # across two paths: written as two files
    block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB, not compressible within gzip's window
    with open(main / "big.bin", "wb") as file:
        for _ in range(BIG // len(block)):
            file.write(block)
    (main / "big.bin").chmod(0o644)
    return str(store), [str(main), str(dep)]


def tar_bytes(paths: list[str], store_dir: str) -> bytes:
    sink = io.BytesIO()
    size = write_store_paths(sink, paths, store_dir)
    assert size == len(sink.getvalue())
    return sink.getvalue()


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree(root: Path) -> set[str]:
    """Every entry below `root`, as relative names."""
    found = set()
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(str((Path(directory) / name).relative_to(root)))
    return found


def test_system_tar_extracts_every_entry_as_in_the_store(tmp_path: Path) -> None:
    store_dir, paths = make_store(tmp_path / "src")
    archive = tmp_path / "layer.tar"
    archive.write_bytes(tar_bytes(paths, store_dir))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)

    source_root = Path(store_dir).parent.parent
    names = tree(source_root)
    assert names == tree(out)  # nothing missing, nothing extra
    assert len(names) == 23
    for name in names:
        source, copy = source_root / name, out / name
        src, dst = os.lstat(source), os.lstat(copy)
        assert stat.S_IFMT(src.st_mode) == stat.S_IFMT(dst.st_mode), name
        if stat.S_ISLNK(src.st_mode):
            assert os.readlink(copy) == os.readlink(source), name
        else:
            assert stat.S_IMODE(dst.st_mode) == store_mode(src.st_mode), name
            assert dst.st_mtime == 1, name
        if stat.S_ISREG(src.st_mode):
            assert file_sha(copy) == file_sha(source), name
    main = out / "nix" / "store" / ("a" * 32 + "-fidelity")
    dep = out / "nix" / "store" / ("b" * 32 + "-dep")
    assert os.listdir(main / "empty") == []
    assert stat.S_IMODE(os.lstat(main / "bin" / "tool").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(main / "share" / "doc" / "readme").st_mode) == 0o444
    assert os.lstat(main / "data-1").st_ino == os.lstat(main / "data-2").st_ino
    assert os.lstat(main / "bin" / "tool").st_ino != os.lstat(dep / "tool-link").st_ino
    assert (main / "café-日本.txt").read_text() == "non-ascii\n"
    assert os.path.getsize(main / "big.bin") == BIG


def test_entries_are_sorted_with_fixed_metadata_and_no_host_values(tmp_path: Path) -> None:
    store_dir, paths = make_store(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(paths, store_dir)), mode="r:") as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names[:2] == ["nix", "nix/store"]
    assert names == sorted(names, key=lambda n: n.encode())
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 1)
        assert set(member.pax_headers) <= {"path", "linkpath"}, member.pax_headers
    by_name = {m.name: m for m in members}
    long_name = next(n for n in names if n.endswith("long-name-file"))
    assert len(long_name) > 100 and by_name[long_name].pax_headers == {"path": long_name}
    hard = [m for m in members if m.islnk()]
    assert sorted((m.name.rsplit("/", 1)[1], m.linkname.rsplit("/", 1)[1]) for m in hard) == [
        ("data-2", "data-1"),
    ]
    assert by_name[paths[1][len(str(tmp_path)) + 1 :] + "/tool-link"].isfile()
    assert by_name[paths[0][len(str(tmp_path)) + 1 :] + "/abs-link"].linkname.startswith("/nix/store/bbbb")


def test_writing_twice_gives_identical_bytes_and_digests(tmp_path: Path) -> None:
    store_dir, paths = make_store(tmp_path)
    first = tar_bytes(paths, store_dir)
    assert tar_bytes(list(reversed(paths)), store_dir) == first
    assert len(first) % tarfile.RECORDSIZE == 0
    store = MemoryBlobStore()
    blobs = []
    for _ in range(2):
        with LayerWriter(store) as writer:
            write_store_paths(writer, paths, store_dir)
            blobs.append(writer.close())
    assert blobs[0] == blobs[1]
    assert blobs[0].diff_id == "sha256:" + hashlib.sha256(first).hexdigest()
    compressed = store.read(blobs[0].digest)
    assert gzip.decompress(compressed) == first
    assert compressed[3] == 0 and compressed[4:8] == b"\0\0\0\0"  # no file name, no timestamp


def test_non_utf8_names_single_file_and_symlink_store_paths(tmp_path: Path) -> None:
    store = tmp_path / "store"
    odd = store / ("c" * 32 + "-odd")
    odd.mkdir(parents=True)
    with open(os.path.join(os.fsencode(odd), b"latin1-\xe9"), "wb") as file:
        file.write(b"bytes\n")
    script = store / ("d" * 32 + "-script")
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (store / ("e" * 32 + "-link")).symlink_to(f"/nix/store/{script.name}")
    archive = tmp_path / "x.tar"
    archive.write_bytes(tar_bytes([str(odd), str(script), str(store / ("e" * 32 + "-link"))], str(store)))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    extracted = os.fsencode(out / "nix" / "store" / odd.name)
    assert os.listdir(extracted) == [b"latin1-\xe9"]
    assert stat.S_IMODE(os.lstat(out / "nix" / "store" / script.name).st_mode) == 0o555
    assert os.readlink(out / "nix" / "store" / ("e" * 32 + "-link")) == f"/nix/store/{script.name}"


class HashingSink:
    """Counts and hashes what it is given, keeping nothing."""

    def __init__(self) -> None:
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self.hash.update(data)
        return len(data)


def test_a_1_gib_file_streams_in_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "store" / ("f" * 32 + "-huge")
    path.parent.mkdir()
    with open(path, "wb") as file:
        file.truncate(1 << 30)  # sparse: cheap to create, read back as zeros
    sink = HashingSink()
    tracemalloc.start()
    try:
        write_store_paths(sink, [str(path)], str(path.parent))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    assert sink.size >= (1 << 30) + 3 * 512


def test_special_files_and_foreign_paths_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    weird = store / ("g" * 32 + "-weird")
    weird.mkdir(parents=True)
    os.mkfifo(weird / "fifo")
    with pytest.raises(ValueError, match="fifos"):
        write_store_paths(io.BytesIO(), [str(weird)], str(store))
    with pytest.raises(ValueError, match="not a store path"):
        write_store_paths(io.BytesIO(), [str(tmp_path / "elsewhere" / "x")], str(store))
