"""NAR throughput of nixforge's /nix-cache/ for a 100-path closure, first fetch (dump) and second
(stored), beside `nix copy --to file://...` of the same closure; and narinfo req/s with wrk.

Usage: python bench/nar_cache.py [--paths 100] [--size-kib 1024] [--wrk-seconds 10]

A flake in a temporary directory holds a chain of `--paths` derivations (each references the one
before, so the last one's closure has them all), each with `--size-kib` of data: half random, half
text. A real `twistd -n nixforge` with a fresh key serves its closure image, then:
- first fetch: `nix copy --from http://.../nix-cache --to <fresh chroot store>` (every NAR dumped by
  Nix, xz-compressed and stored by nixforge);
- second fetch: the same into another fresh store (every NAR a stored blob);
- peer: `nix copy --to file://<dir>` of the same closure (Nix writes its own xz binary cache);
- wrk: GET of one narinfo, 2 threads, 16 connections; then the image's manifest by tag, for scale.
Throughput is the closure's NAR bytes (narSize) over the wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from e2e_support import ForgeProcess, nix_command, nix_env  # noqa: E402

MB = 1_000_000


def write_flake(directory: Path, paths: int, size_kib: int) -> None:
    """A flake with `chain<N>`: N derivations, each referencing the previous one."""
    random_kib = size_kib // 2
    lines = [
        "{",
        '  outputs = { self }: let',
        f'    system = "{platform.machine()}-linux";',
        "    step = prev: i: derivation {",
        '      name = "chain-${toString i}"; inherit system; builder = "/bin/sh";',
        "      args = [ \"-c\" ''",
        "        /bin/mkdir -p $out",
        f"        /usr/bin/head -c {random_kib * 1024} /dev/urandom > $out/random.bin",
        f"        /usr/bin/seq 1 {size_kib * 1024 // 2 // 7} > $out/text.txt",
        "        echo ${if prev == null then \"none\" else prev} > $out/previous",
        "      '' ];",
        "    };",
        f"    chain = builtins.foldl' (prev: i: step prev i) null (builtins.genList (i: i) {paths});",
        "  in { packages.${system}.chain = chain; };",
        "}",
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flake.nix").write_text("\n".join(lines) + "\n")


def run(argv: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=nix_env(), check=False)
    took = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv[:6]} failed:\n{result.stderr[-3000:]}")
    return took, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=100)
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--wrk-seconds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nar-bench-") as temp:
        work = Path(temp)
        write_flake(work / "flake", args.paths, args.size_kib)
        flake = f"path:{work / 'flake'}"
        _, out = run(nix_command("build", "--json", "--no-link", f"{flake}#chain"))
        root = json.loads(out)[0]["outputs"]["out"]
        _, info = run(nix_command("path-info", "-r", "--json", root))
        closure = json.loads(info)
        nar_bytes = sum(entry["narSize"] for entry in closure)
        print(f"closure: {len(closure)} paths, {nar_bytes / MB:.1f} MB of NAR")
        run(["nix-store", "--generate-binary-cache-key", "bench-1", str(work / "sec"), str(work / "pub")])
        public = (work / "pub").read_text().strip()
        forge = ForgeProcess(flake_ref=flake, data_dir=work / "data", work_dir=work / "forge", log_level="INFO",
                             extra_args=["--cache-key-file", str(work / "sec")]).start()
        try:
            forge.manifest("chain")
            copy = nix_command("copy", "--from", forge.url("/nix-cache"), "--option", "trusted-public-keys", public,
                               "--option", "narinfo-cache-negative-ttl", "0",
                               "--option", "narinfo-cache-positive-ttl", "0")
            first, _ = run([*copy, "--to", str(work / "first"), root])
            second, _ = run([*copy, "--to", str(work / "second"), root])
            peer, _ = run(nix_command("copy", "--to", f"file://{work / 'peer'}", root))
            narinfo = forge.url(f"/nix-cache/{root[len('/nix/store/'):][:32]}.narinfo")
            _, wrk = run(["wrk", "-t2", "-c16", f"-d{args.wrk_seconds}s", narinfo])
            _, wrk_manifest = run(["wrk", "-t2", "-c16", f"-d{args.wrk_seconds}s",
                                   forge.url("/v2/chain/manifests/latest")])
        finally:
            forge.stop()
        requests = re.search(r"Requests/sec:\s+([0-9.]+)", wrk)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
        manifest_requests = re.search(r"Requests/sec:\s+([0-9.]+)", wrk_manifest)
        for label, seconds in (("first fetch (dump + xz + store)", first), ("second fetch (stored NARs)", second),
                               ("peer: nix copy --to file://", peer)):
            print(f"{label:36s} {seconds:7.2f} s  {nar_bytes / MB / seconds:7.1f} MB/s")
        print(f"narinfo GET with wrk -t2 -c16 -d{args.wrk_seconds}s: "
              f"{requests.group(1) if requests else '?'} req/s, non-2xx: {errors.group(1) if errors else 0}; "
              f"beside it, manifest by tag: {manifest_requests.group(1) if manifest_requests else '?'} req/s")


if __name__ == "__main__":
    main()
