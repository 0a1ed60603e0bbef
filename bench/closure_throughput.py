"""Closure image assembly throughput (MB of closure per second) against `tar -c | gzip -6`.

Usage: python bench/closure_throughput.py [STORE_PATH ...] [--rounds N] [--workers N] [--max-layers N]

Without store paths, a fixture closure of ~200 MB of mixed files (compressible text, incompressible
binaries, many small files, symlinks) is generated in a temporary fake store. With store paths, their
closure comes from `nix path-info -r --json`. Both sides read warm files and write their output to
the same temporary directory: nixforge into a fresh FilesystemBlobStore (tar + gzip + both hashes in
one pass per layer, fsync, rename), the baseline as `tar -c ... | gzip -6 > out.tar.gz` (an argv
pipeline, no shell). The best of `--rounds` runs of each is reported, with the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from attrs import frozen

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixforge.oci.closure_image import DEFAULT_WORKERS, PackageMeta, assemble_closure_image
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.layer_cache import LayerCache

MB = 1_000_000


@frozen
class PathInfo:
    """The three StorePathInfo fields the assembler needs."""

    path: str
    nar_size: int
    references: tuple[str, ...]


def build_fixture(store: Path, total: int = 200 * MB, count: int = 40) -> list[PathInfo]:
    """Write `count` fake store paths of about `total` bytes; path i references a few later ones."""
    rnd = random.Random(1)
    words = [hashlib.sha256(str(i).encode()).hexdigest()[: rnd.randint(3, 10)] for i in range(2000)]
    infos: list[PathInfo] = []
    names = [f"{hashlib.sha256(str(i).encode()).hexdigest()[:32]}-pkg{i}" for i in range(count)]
    share = total // count
    for i, name in enumerate(names):
        root = store / name
        (root / "bin").mkdir(parents=True)
        (root / "share" / "doc").mkdir(parents=True)
        (root / "lib").mkdir()
        written = 0
        with open(root / "bin" / f"pkg{i}", "wb") as binary:  # machine-code-like: half random, half zeros
            while written < share // 2:
                chunk = rnd.randbytes(4096) + bytes(4096)
                binary.write(chunk)
                written += len(chunk)
        os.chmod(root / "bin" / f"pkg{i}", 0o755)
        with open(root / "lib" / "data.txt", "w") as text:  # compressible text
            while written < share * 9 // 10:
                line = " ".join(rnd.choices(words, k=12)) + "\n"
                text.write(line)
                written += len(line)
        for j in range(200):  # many small files
            small = rnd.randbytes(rnd.randint(10, 900)).hex()
            (root / "share" / "doc" / f"file-{j}.txt").write_text(small)
            written += len(small)
        (root / "lib" / "libpkg.so").symlink_to("data.txt")
        refs = tuple(str(store / names[j]) for j in rnd.sample(range(i + 1, count), min(3, count - i - 1)))
        infos.append(PathInfo(str(root), written, refs))
    top = PathInfo(str(store / ("0" * 32 + "-app")), 0, tuple(info.path for info in infos[:5]))
    Path(top.path, "bin").mkdir(parents=True)
    Path(top.path, "bin", "app").write_text("#!/bin/sh\n")
    return [top, *infos]


def nix_closure(paths: Sequence[str]) -> list[PathInfo]:
    """The closure of real store paths, from `nix path-info -r --json` (list or dict form)."""
    env = dict(os.environ, NIX_CONFIG="experimental-features = nix-command flakes")
    listed = json.loads(subprocess.run(["nix", "path-info", "-r", "--json", *paths], check=True,
                                       capture_output=True, env=env).stdout)
    entries = listed if isinstance(listed, list) else [dict(v, path=k) for k, v in listed.items()]
    return [PathInfo(e["path"], int(e["narSize"]), tuple(e.get("references", ()))) for e in entries]


def content_bytes(paths: Sequence[str]) -> int:
    """Apparent size of every regular file under `paths` (what the tar has to carry); warms the cache."""
    total = 0
    for path in paths:
        for directory, _, files in os.walk(path):
            for name in files:
                full = os.path.join(directory, name)
                if not os.path.islink(full):
                    with open(full, "rb") as file:
                        while chunk := file.read(1 << 20):
                            total += len(chunk)
        if os.path.isfile(path) and not os.path.islink(path):
            total += os.path.getsize(path)
    return total


def run_baseline(paths: Sequence[str], store_dir: str, out: Path) -> float:
    """Time `tar -c -C <root> nix/store/... | gzip -6 > out` (no shell)."""
    root = os.path.dirname(os.path.dirname(store_dir.rstrip("/")))
    relative = sorted(os.path.relpath(p, root) for p in paths)
    start = time.perf_counter()
    with open(out, "wb") as sink:
        tar = subprocess.Popen(["tar", "-c", "-C", root, "--", *relative], stdout=subprocess.PIPE)
        gzip = subprocess.Popen(["gzip", "-6", "-n"], stdin=tar.stdout, stdout=sink)
        assert tar.stdout is not None
        tar.stdout.close()
        if gzip.wait() or tar.wait():
            raise RuntimeError("tar | gzip failed")
    return time.perf_counter() - start


def run_assembly(closure: list[PathInfo], store_dir: str, data: Path, workers: int, max_layers: int) -> float:
    """Time one assembly into an empty store and cache; also report the cached re-assembly."""
    store = FilesystemBlobStore(str(data / "blobs"))
    cache = LayerCache.in_directory(str(data / "layers"))
    meta = PackageMeta(name="app", out_path=closure[0].path, main_program=None, labels={})
    start = time.perf_counter()
    assemble_closure_image(store, cache, closure, meta, max_layers, store_dir, workers)
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    assemble_closure_image(store, cache, closure, meta, max_layers, store_dir, workers)
    print(f"  cached re-assembly: {(time.perf_counter() - start) * 1000:.1f} ms")
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print both throughputs and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="store paths (default: a generated ~200 MB fixture)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--max-layers", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nixforge-bench-") as temp:
        work = Path(temp)
        if args.paths:
            store_dir, closure = "/nix/store", nix_closure(args.paths)
        else:
            store_dir = str(work / "nix" / "store")
            closure = build_fixture(Path(store_dir))
        paths = [info.path for info in closure]
        size = content_bytes(paths)
        print(f"closure: {len(paths)} store paths, {size / MB:.1f} MB of file content, {os.cpu_count()} CPUs")
        ours, theirs = [], []
        for round_number in range(args.rounds):
            print(f"round {round_number + 1}:")
            theirs.append(run_baseline(paths, store_dir, work / "baseline.tar.gz"))
            print(f"  tar | gzip -6: {theirs[-1]:.2f} s ({os.path.getsize(work / 'baseline.tar.gz') / MB:.1f} MB)")
            data = work / f"data{round_number}"
            ours.append(run_assembly(closure, store_dir, data, args.workers, args.max_layers))
            blob_bytes = sum(f.stat().st_size for f in (data / "blobs").rglob("*") if f.is_file())
            print(f"  nixforge (workers={args.workers}): {ours[-1]:.2f} s ({blob_bytes / MB:.1f} MB of blobs)")
            shutil.rmtree(data)
        best_ours, best_theirs = min(ours), min(theirs)
        print(f"nixforge assembly: {size / MB / best_ours:.1f} MB/s (wall {best_ours:.2f} s)")
        print(f"tar -c | gzip -6:  {size / MB / best_theirs:.1f} MB/s (wall {best_theirs:.2f} s)")
        print(f"ratio (nixforge / tar|gzip throughput): {best_theirs / best_ours:.2f}")


if __name__ == "__main__":
    main()
