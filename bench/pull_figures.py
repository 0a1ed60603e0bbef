"""The serve benchmark's pull figures: warm `skopeo copy`, cold-pull overhead of a closure, and manifest
latency during big-blob downloads with a cold page cache; plus the machine and version record."""

from __future__ import annotations

import http.client
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from registry_peer import ServerProcess

NIX_CONFIG = "substituters =\nexperimental-features = nix-command flakes"

# One flake package holding `count` small store paths (the top one refers to all the others), so the
# runtime closure has count + 1 paths. `seed` makes every package's paths new to /nix/store.
CLOSURE_PACKAGE = """\
    packages.x86_64-linux.%(name)s = let
      leaf = i: derivation {
        name = "leaf-%(seed)s-${toString i}";
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" "echo %(seed)s ${toString i} > $out" ];
      };
    in derivation {
      name = "%(name)s-%(seed)s";
      system = "x86_64-linux";
      builder = "/bin/sh";
      leaves = builtins.genList leaf %(count)d;
      args = [ "-c" "PATH=/usr/bin:/bin; mkdir -p $out; for leaf in $leaves; do echo $leaf >> $out/refs; done" ];
    };
"""


def closure_packages(seed: str, rounds: int, count: int) -> tuple[str, list[str], list[str]]:
    """Flake output text for `rounds` packages pulled cold and `rounds` built by `nix build`; their names."""
    cold = [f"cold{index}" for index in range(rounds)]
    built = [f"built{index}" for index in range(rounds)]
    text = "".join(CLOSURE_PACKAGE % {"name": name, "seed": f"{seed}{name}", "count": count}
                   for name in cold + built)
    return text, cold, built


def _command_version(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as error:
        return f"unavailable ({error})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine_and_versions(twistd: str) -> dict[str, Any]:
    """nproc, memory, kernel, the date, and the versions of everything measured or measuring."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        total_kib = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    python = str(Path(twistd).with_name("python"))
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"nproc": os.cpu_count(), "memory_mib": total_kib // 1024, "kernel": platform.release()},
        "versions": {
            "python": _command_version([python, "--version"]),
            "twisted": _command_version([python, "-c", "import twisted; print(twisted.__version__)"]),
            "nixforge": _command_version([python, "-c", "import importlib.metadata as m; print(m.version('nixforge'))"])
            + f" ({commit})",
            "docker-registry": _command_version(["docker-registry", "--version"]),
            "wrk": _command_version(["wrk", "-v"]),
            "skopeo": _command_version(["skopeo", "--version"]),
            "nix": _command_version(["nix", "--version"]),
        },
    }


def timed(action: Callable[[], object]) -> float:
    """Seconds `action` takes."""
    began = time.monotonic()
    action()
    return time.monotonic() - began


def skopeo_to_layout(server: ServerProcess, repository: str, tag: str, layout: Path) -> None:
    """`skopeo copy` an image from `server` into a fresh OCI layout (skopeo verifies every digest)."""
    shutil.rmtree(layout, ignore_errors=True)
    argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
            f"docker://{server.host}/{repository}:{tag}", f"oci:{layout}:{tag}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    shutil.rmtree(layout, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()[-2000:]}")


def warm_pull(running: list[ServerProcess], repository: str, tag: str, rounds: int, workdir: Path) -> dict[str, Any]:
    """Median seconds of a `skopeo copy` to an OCI layout per server, servers alternating first."""
    times: dict[str, list[float]] = {server.name: [] for server in running}
    for round_number in range(rounds):
        order = running if round_number % 2 == 0 else list(reversed(running))
        for server in order:
            times[server.name].append(round(timed(
                lambda server=server: skopeo_to_layout(server, repository, tag, workdir / "warm-layout")), 3))
    return {name: {"median_s": statistics.median(values), "rounds_s": values} for name, values in times.items()}


def cold_pull_overhead(forge: ServerProcess, flake_dir: Path, cold: list[str], built: list[str],
                       workdir: Path) -> dict[str, Any]:
    """Per round: first pull of a new closure image ÷ (`nix build` of an identical new closure + a warm pull)."""
    env = {**os.environ, "NIX_CONFIG": NIX_CONFIG}
    rounds = []
    for cold_name, built_name in zip(cold, built, strict=True):
        layout = workdir / "cold-layout"
        first = timed(partial(skopeo_to_layout, forge, cold_name, "latest", layout))
        build = timed(partial(subprocess.run, ["nix", "build", "--no-link", f"path:{flake_dir}#{built_name}"],
                              env=env, check=True, capture_output=True, timeout=600))
        warm = timed(partial(skopeo_to_layout, forge, cold_name, "latest", layout))
        rounds.append({"first_pull_s": round(first, 3), "nix_build_s": round(build, 3), "warm_pull_s": round(warm, 3),
                       "overhead": round(first / (build + warm), 3)})
    return {"rounds": rounds, "median_overhead": statistics.median(r["overhead"] for r in rounds)}


def drop_page_cache() -> bool:
    """`echo 3 > /proc/sys/vm/drop_caches` after a sync; False where that is not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as drop:
            drop.write("3")
    except OSError:
        return False
    return True


def manifest_latency_under_blob_load(server: ServerProcess, blob_path: str, manifest_path: str, accept: str,
                                     clients: int, seconds: float, samples: int) -> dict[str, Any]:
    """Drop the page cache, start `clients` downloads of the big blob, and time manifest GETs meanwhile."""
    cache_dropped = drop_page_cache()
    curl = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--max-time", str(int(seconds) + 30),
                              server.base_url + blob_path], stdin=subprocess.DEVNULL)
            for _ in range(clients)]
    latencies = []
    try:
        time.sleep(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        interval = seconds / samples
        for _ in range(samples):
            began = time.monotonic()
            connection.request("GET", manifest_path, headers={"Accept": accept})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{server.name}: manifest answered {response.status} under load")
            latencies.append((time.monotonic() - began) * 1000)
            time.sleep(max(0.0, interval - (time.monotonic() - began)))
        connection.close()
        still_downloading = sum(process.poll() is None for process in curl)
    finally:
        for process in curl:
            if process.poll() is None:
                process.terminate()
            process.wait(30)
    latencies.sort()
    return {"cache_dropped": cache_dropped, "samples": len(latencies), "downloads_running_at_end": still_downloading,
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
            "max_ms": round(latencies[-1], 2)}
