"""Serving benchmark: nixforge against CNCF distribution on the same blobs, same machine, same run; ratios.

Usage (as root, from the repository):
    /work/venv/bin/python bench/serve_benchmark.py --json bench-serve.json
    /work/venv/bin/python bench/serve_benchmark.py --peer-only      # distribution alone, synthetic image

nixforge builds a tiny flake (one package holding ~100 MB of random bytes) and assembles its image;
skopeo copies that image into distribution, so both serve the same blobs under the same digests.
Then `wrk` fetches the large layer blob, the small config blob and the manifest by tag from each
server in turn, at each concurrency, for a bounded time, while the server's RSS is sampled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attrs import define, field

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blob_ceiling import curl_downloads, median_ratio, ratio_lines, round_ratios, save_blob, start_probes
from pull_figures import (
    closure_packages,
    cold_pull_overhead,
    machine_and_versions,
    manifest_latency_under_blob_load,
    warm_pull,
)
from registry_peer import (
    ServerProcess,
    api_answers,
    make_oci_layout,
    skopeo_copy,
    spawn,
    start_peer,
    wait_until,
)

REPOSITORY = "bigblob"
CASES = ("blob-large", "blob-small", "manifest-tag")
TAG = "latest"
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
LISTENING = re.compile(rb"nixforge listening on 127\.0\.0\.1:(\d+)")
WRK_REPORT = re.compile(r"^WRKJSON (\{.*\})$", re.MULTILINE)
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.bytes, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
FLAKE_TEMPLATE = """\
{
  description = "nixforge serve benchmark: one file of random bytes, and closures of small paths";
  outputs = { self }: {
%(closures)s
    packages.x86_64-linux.%(name)s = derivation {
      name = "%(name)s";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "PATH=/usr/bin:/bin; mkdir -p $out && head -c %(size)d /dev/urandom > $out/big" ];
    };
  };
}
"""


def default_twistd() -> str:
    """The repository's `.venv/bin/twistd`, else /work/venv's, else the one on PATH."""
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo / ".venv/bin/twistd", Path("/work/venv/bin/twistd")):
        if candidate.exists():
            return str(candidate)
    return shutil.which("twistd") or "twistd"


# The connection caps the lead is raising in main (4096 in all, 1024 per client); the bench sets them
# explicitly so that 1,000 clients from 127.0.0.1 are not refused by the per-client cap of 64.
CAPS = {"NIXFORGE_MAX_CONNECTIONS": "4096", "NIXFORGE_MAX_CLIENT_CONNECTIONS": "1024"}
BACKLOG = 1024


def start_nixforge(workdir: Path, flake_dir: Path, twistd: str, timeout: float = 60.0,
                   extra_env: Mapping[str, str] | None = None, name: str = "nixforge") -> ServerProcess:
    """Start `twistd -n nixforge` on 127.0.0.1 port 0, offline Nix; return once it logged its port.

    `extra_env` is added to its environment last (e.g. an S3 store's settings)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**CAPS, **os.environ, "NIX_CONFIG": "substituters =\nexperimental-features = nix-command flakes",
           **(extra_env or {})}
    argv = [
        # The endpoint string gets the backlog `--port 5000` gets by default (Twisted's own default is 50).
        twistd, "-n", "--pidfile", "", "nixforge", "--port", f"tcp:0:interface=127.0.0.1:backlog={BACKLOG}",
        "--flake", f"path:{flake_dir}", "--data-dir", str(workdir / "data"),
        # Measure serving only: no background rebuild of `latest` in the middle of a run.
        "--refresh-interval", "86400",
    ]
    log_path = workdir / "nixforge.log"
    process = spawn(argv, log_path, workdir, env)
    ports: list[int] = []

    def listening() -> bool:
        found = LISTENING.search(log_path.read_bytes())
        if found:
            ports.append(int(found.group(1)))
        return bool(found)

    server: ServerProcess | None = None
    try:
        wait_until(listening, process, "nixforge", timeout)
        server = ServerProcess(name, process, ports[0], log_path)
        wait_until(lambda: api_answers(server.base_url), process, "nixforge /v2/", timeout)
    except BaseException:
        if server is None:
            process.terminate()
            process.wait(10)
        else:
            server.stop()
        raise
    return server


# -- memory and CPU of a server process ---------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@define
class MemoryWatch:
    """Peak RSS of a process over an interval: VmHWM reset at the start, plus VmRSS sampled meanwhile."""

    pid: int
    interval: float = 0.05
    peak_kib: int = 0
    hwm_reset: bool = False
    _stop: threading.Event = field(factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        """Reset the high-water mark (`clear_refs` 5) and start sampling."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as clear_refs:
                clear_refs.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._stop = threading.Event()
        self.peak_kib = _status_kib(self.pid, "VmRSS")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmRSS"))

    def stop(self) -> int:
        """Stop sampling; return the peak RSS in KiB (VmHWM when it could be reset, else sampled)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.hwm_reset:
            self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmHWM"))
        return self.peak_kib


# -- load ---------------------------------------------------------------------------------------


def run_wrk(url: str, connections: int, duration: int, script: Path, accept: str | None) -> dict[str, Any]:
    """Run wrk against `url` for `duration` seconds; return its summary (requests, bytes, errors, latency)."""
    threads = max(1, min(connections, os.cpu_count() or 1))
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
            "--timeout", "60s", "-s", str(script)]
    if accept:
        argv += ["-H", f"Accept: {accept}"]
    result = subprocess.run([*argv, url], capture_output=True, text=True, timeout=duration + 120, check=False)
    found = WRK_REPORT.search(result.stdout)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stdout[-1000:]} {result.stderr[-1000:]}")
    return dict(json.loads(found.group(1)))


def measure(server: ServerProcess, url: str, connections: int, duration: int, script: Path,
            accept: str | None, tool: str = "wrk") -> dict[str, Any]:
    """One point: wrk (or `connections` curl downloads at once) against one server, with its peak RSS and CPU."""
    watch = MemoryWatch(server.pid)
    cpu_before = cpu_seconds(server.pid)
    watch.start()
    try:
        if tool == "curl":
            report = curl_downloads(url, connections, duration)
        else:
            report = run_wrk(url, connections, duration, script, accept)
    finally:
        peak_kib = watch.stop()
    seconds = report["duration_us"] / 1e6
    return {
        "server": server.name, "connections": connections, "seconds": round(seconds, 2),
        "requests": report["requests"], "bytes": report["bytes"],
        "requests_per_s": round(report["requests"] / seconds, 1),
        "mb_per_s": round(report["bytes"] / seconds / 1e6, 1),
        "p50_ms": round(report["p50_us"] / 1000, 2), "p99_ms": round(report["p99_us"] / 1000, 2),
        "errors": sum(report[key] for key in ("connect", "read", "write", "status", "timeout")),
        "non_2xx": report["status"],
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "cpu_s": round(cpu_seconds(server.pid) - cpu_before, 2), "tool": tool,
    }


# -- content ------------------------------------------------------------------------------------


def http_get(url: str, accept: str | None = None, timeout: float = 600.0) -> tuple[bytes, dict[str, str]]:
    """GET `url`; return the body and the response headers."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read(), dict(response.headers.items())


def blob_sha256(url: str) -> tuple[str, int]:
    """Stream a blob and return its `sha256:<hex>` digest and size."""
    digest, size = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=600) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return f"sha256:{digest.hexdigest()}", size


def manifest_of(server: ServerProcess) -> tuple[dict[str, Any], str]:
    """The manifest of `bigblob:latest` on `server` and its Docker-Content-Digest."""
    body, headers = http_get(f"{server.base_url}/v2/{REPOSITORY}/manifests/{TAG}", MANIFEST_ACCEPT)
    return json.loads(body), headers.get("Docker-Content-Digest", "")


def check_blob(server: ServerProcess, descriptor: dict[str, Any]) -> None:
    """Fail unless `server` serves the blob with the digest and size its descriptor says."""
    digest, size = blob_sha256(f"{server.base_url}/v2/{REPOSITORY}/blobs/{descriptor['digest']}")
    if (digest, size) != (descriptor["digest"], descriptor["size"]):
        raise RuntimeError(f"{server.name} served {digest} ({size} B) for {descriptor['digest']}")


@contextmanager
def servers(workdir: Path, args: argparse.Namespace) -> Iterator[list[ServerProcess]]:
    """Start the servers with identical content (nixforge's image copied into the peer); stop them after."""
    started: list[ServerProcess] = []
    try:
        peer = start_peer(workdir / "distribution")
        started.append(peer)
        if args.peer_only:
            layout = workdir / "layout"
            make_oci_layout(layout, TAG, args.blob_mib * 1024 * 1024)
            skopeo_copy(f"oci:{layout}:{TAG}", f"docker://{peer.host}/{REPOSITORY}:{TAG}")
        else:
            flake_dir = workdir / "flake"
            flake_dir.mkdir()
            closures, args.cold_names, args.built_names = closure_packages(
                f"{os.getpid()}x{int(time.time())}", args.repeat, args.closure_paths)
            (flake_dir / "flake.nix").write_text(
                FLAKE_TEMPLATE % {"name": REPOSITORY, "size": args.blob_mib * 1024 * 1024, "closures": closures},
                encoding="utf-8")
            args.flake_dir = flake_dir
            forge = start_nixforge(workdir / "nixforge", flake_dir, args.twistd)
            started.insert(0, forge)
            began = time.monotonic()
            manifest_of(forge)  # the first pull: Nix builds, nixforge assembles and stores the image
            print(f"first pull from nixforge (build + image assembly): {time.monotonic() - began:.1f} s",
                  file=sys.stderr)
            skopeo_copy(f"docker://{forge.host}/{REPOSITORY}:{TAG}", f"docker://{peer.host}/{REPOSITORY}:{TAG}")
        yield started
    except BaseException:
        for server in started:
            print(f"--- {server.name} log tail ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        for server in reversed(started):
            server.stop()


def content_under_test(running: list[ServerProcess]) -> dict[str, Any]:
    """Check every server serves the same manifest and blobs; return the descriptors measured."""
    manifests = {server.name: manifest_of(server) for server in running}
    first_manifest, _ = next(iter(manifests.values()))
    digests = {name: digest for name, (_, digest) in manifests.items()}
    if len(set(digests.values())) != 1:
        print(f"warning: manifest digests differ: {digests}", file=sys.stderr)
    layer = max(first_manifest["layers"], key=lambda layer: layer["size"])
    config = first_manifest["config"]
    for server in running:
        check_blob(server, layer)
        check_blob(server, config)
    return {"manifest_digests": digests, "large_blob": layer, "small_blob": config,
            "layers": len(first_manifest["layers"])}


# -- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start both servers, measure every figure, return the results."""
    results: dict[str, Any] = {
        **machine_and_versions(args.twistd),
        "settings": {"duration_s": args.duration, "repeat": args.repeat, "points": args.points,
                     "blob_mib": args.blob_mib, "warmup_s": args.warmup, "closure_paths": args.closure_paths,
                     "nixforge_env": CAPS, "nixforge_backlog": BACKLOG, "tools": ["wrk", "curl"],
                     "curl_clients": args.curl_clients,
                     "nixforge_blob_env": {key: value for key, value in os.environ.items()
                                           if key in ("NIXFORGE_SEND_THREADS", "NIXFORGE_BLOB_COPY")}},
        "points": [],
    }
    with tempfile.TemporaryDirectory(prefix="nixforge-bench-") as temp, servers(Path(temp), args) as running:
        script = Path(temp) / "report.lua"
        script.write_text(WRK_SCRIPT, encoding="utf-8")
        content = content_under_test(running)
        results["content"] = content
        results["distribution_config"] = (Path(temp) / "distribution" / "config.yml").read_text(encoding="utf-8")
        blob_copy = Path(temp) / "blob.bin"
        save_blob(f"{running[-1].base_url}/v2/{REPOSITORY}/blobs/{content['large_blob']['digest']}", blob_copy)
        probes = start_probes(blob_copy, Path(temp))
        try:
            _measure_points(results, args, running, probes, content, script, Path(temp))
        finally:
            for probe in probes:
                probe.stop()
    results["summary"] = summarize(results["points"])
    results["ratios"] = ratios(results["summary"])
    results["round_ratios"] = round_ratios(results["points"])
    results["figures"] = figures(results)
    return results


def _measure_points(results: dict[str, Any], args: argparse.Namespace, running: list[ServerProcess],
                    probes: list[ServerProcess], content: dict[str, Any], script: Path, temp: Path) -> None:
    """Every wrk and curl point, rounds alternating the servers, then pulls and the cold-cache figure."""
    results["idle_rss_mb"] = {s.name: round(_status_kib(s.pid, "VmRSS") / 1024, 1) for s in running}
    paths = {
        "blob-large": (f"/v2/{REPOSITORY}/blobs/{content['large_blob']['digest']}", None),
        "blob-small": (f"/v2/{REPOSITORY}/blobs/{content['small_blob']['digest']}", None),
        "manifest-tag": (f"/v2/{REPOSITORY}/manifests/{TAG}", MANIFEST_ACCEPT),
    }
    flip = False
    warmed: set[str] = set()
    points = [(case, connections, "wrk") for case, connections in args.points]
    points += [("blob-curl", clients, "curl") for clients in args.curl_clients]
    for case, connections, tool in points:
        path, accept = paths["blob-large" if case == "blob-curl" else case]
        measured = [*running, *probes] if case.startswith("blob") else running
        if case not in warmed and args.warmup > 0:
            warmed.add(case)
            for server in measured:
                run_wrk(server.base_url + path, 1, args.warmup, script, accept)
        for round_number in range(args.repeat):
            # Alternate which server goes first, so neither always follows the other's load.
            order = list(reversed(measured)) if flip else list(measured)
            flip = not flip
            for server in order:
                point = measure(server, server.base_url + path, connections, args.duration, script, accept, tool)
                point.update(case=case, round=round_number)
                results["points"].append(point)
                print(f"{case:13} c={connections:<4} {server.name:12} {point['requests_per_s']:>10} req/s "
                      f"{point['mb_per_s']:>9} MB/s  p99 {point['p99_ms']} ms  rss {point['peak_rss_mb']} MB  "
                      f"errors {point['errors']}", file=sys.stderr)
    results["idle_rss_after_mb"] = {s.name: round(_status_kib(s.pid, "VmRSS") / 1024, 1) for s in running}
    if args.quick:
        return
    if not args.peer_only:
        print("warm pulls (skopeo copy to an OCI layout)", file=sys.stderr)
        results["warm_pull"] = warm_pull(running, REPOSITORY, TAG, args.repeat, temp)
        print(f"cold pulls of {args.closure_paths}-path closures", file=sys.stderr)
        results["cold_pull"] = cold_pull_overhead(running[0], args.flake_dir, args.cold_names, args.built_names,
                                                  temp)
    print("manifest latency during 16 big-blob downloads, cold page cache", file=sys.stderr)
    cold_cache: dict[str, list[dict[str, Any]]] = {server.name: [] for server in running}
    for round_number in range(args.repeat):
        for server in (running if round_number % 2 == 0 else list(reversed(running))):
            cold_cache[server.name].append(manifest_latency_under_blob_load(
                server, paths["blob-large"][0], paths["manifest-tag"][0], MANIFEST_ACCEPT, 16,
                args.cold_seconds, 100))
    results["cold_cache_manifest"] = cold_cache


def _point(results: dict[str, Any], case: str, connections: int, server: str) -> dict[str, Any] | None:
    return next((row for row in results["summary"]
                 if (row["case"], row["connections"], row["server"]) == (case, connections, server)), None)


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's figures: nixforge, distribution, the ratio, the target and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, ours: float | None, theirs: float | None, target: str,
            met: Callable[[float, float], bool]) -> None:
        ratio = _ratio(ours, theirs) if ours is not None and theirs else None
        rows.append({"figure": figure, "nixforge": ours, "distribution": theirs, "ratio": ratio, "target": target,
                     "met": None if ours is None or theirs is None else bool(met(ours, theirs))})

    for case, tool in (("blob-curl", "curl"), ("blob-large", "wrk")):
        for connections in (1, 16):
            ours, theirs = (_point(results, case, connections, name) for name in ("nixforge", "distribution"))
            label = f"blob GET MB/s, {connections} {tool}{' at once' if tool == 'curl' else ' connections'}"
            if ours and theirs:
                add(label, ours["mb_per_s"], theirs["mb_per_s"], ">= 1.0x", lambda a, b: a >= b)
            probe = median_ratio(results.get("round_ratios", []), tool, connections, "vs_best_probe")
            if ours and probe is not None:
                rows.append({"figure": f"{label}: of the best probe server (median of per-round ratios)",
                             "nixforge": probe, "distribution": None, "ratio": None, "target": ">= 0.95",
                             "met": probe >= 0.95})
    blob_rows = [row for row in results["summary"] if row["case"] in ("blob-large", "blob-curl")]
    cpu = {name: None for name in ("nixforge", "distribution")}
    for name in cpu:
        mine = [row for row in blob_rows if row["server"] == name]
        if mine:
            cpu[name] = round(statistics.median(row["cpu_s_per_gb"] for row in mine), 3)
    add("server CPU s per GB served", cpu["nixforge"], cpu["distribution"], "<= 0.5x", lambda a, b: a <= 0.5 * b)
    ours, theirs = (_point(results, "manifest-tag", 64, name) for name in ("nixforge", "distribution"))
    if ours and theirs:
        add("cached manifest GET req/s, wrk -c64", ours["requests_per_s"], theirs["requests_per_s"], ">= 4.0x",
            lambda a, b: a >= 4.0 * b)
        add("manifest p99 ms, wrk -c64", ours["p99_ms"], theirs["p99_ms"], "<= 0.5x", lambda a, b: a <= 0.5 * b)
    ours, theirs = (_point(results, "manifest-tag", 1000, name) for name in ("nixforge", "distribution"))
    if ours and theirs:
        add("1,000 manifest clients: errors", ours["errors"], theirs["errors"], "0 (all answered)",
            lambda a, b: a == 0)
        add("1,000 manifest clients: p99 ms", ours["p99_ms"], theirs["p99_ms"], "<= 1.0x", lambda a, b: a <= b)
    ours, theirs = (_point(results, "blob-large", 16, name) for name in ("nixforge", "distribution"))
    if ours and theirs:
        add("peak RSS MiB, 16 clients on the big blob", ours["peak_rss_mb"], theirs["peak_rss_mb"],
            "<= 100 MiB and <= 1.0x", lambda a, b: a <= 100 and a <= b)
    warm = results.get("warm_pull")
    if warm:
        add("warm pull s (skopeo copy to OCI layout)", warm["nixforge"]["median_s"],
            warm["distribution"]["median_s"], "<= 1.0x", lambda a, b: a <= b)
    cold = results.get("cold_pull")
    if cold:
        rows.append({"figure": f"cold-pull overhead, {results['settings']['closure_paths']}-path closure "
                               "(first pull / (nix build + warm pull))",
                     "nixforge": cold["median_overhead"], "distribution": None, "ratio": None, "target": "< 1.3",
                     "met": cold["median_overhead"] < 1.3})
    cache = results.get("cold_cache_manifest", {})
    if cache.get("nixforge") and cache.get("distribution"):
        dropped = all(r["cache_dropped"] for rounds in cache.values() for r in rounds)
        state = "cold page cache" if dropped else "page cache NOT dropped (not allowed)"
        worst = {name: statistics.median(r["max_ms"] for r in rounds) for name, rounds in cache.items()}
        add(f"manifest GET max ms per round, 16 big-blob downloads, {state}", worst["nixforge"],
            worst["distribution"], "< 50 ms", lambda a, b: a < 50)
        worst = {name: max(r["max_ms"] for r in rounds) for name, rounds in cache.items()}
        add(f"manifest GET max ms, worst round, {state}", worst["nixforge"], worst["distribution"], "< 50 ms",
            lambda a, b: a < 50)
    return rows


def figures_table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table, with the machine, date and versions above it."""
    versions = ", ".join(f"{name} {value}" for name, value in results["versions"].items())
    machine = results["machine"]
    lines = [f"{results['date']}; {machine['nproc']} CPUs, {machine['memory_mib']} MiB, kernel {machine['kernel']}",
             versions,
             f"nixforge run with {' '.join(f'{k}={v}' for k, v in CAPS.items())}, backlog {BACKLOG}; "
             f"medians of {results['settings']['repeat']} rounds",
             "",
             "| figure | nixforge | distribution | nixforge / distribution | target | met |",
             "|---|---|---|---|---|---|"]
    for row in results["figures"]:
        met = {True: "yes", False: "no", None: "-"}[row["met"]]
        theirs = "-" if row["distribution"] is None else row["distribution"]
        ratio = "-" if row["ratio"] is None else row["ratio"]
        lines.append(f"| {row['figure']} | {row['nixforge']} | {theirs} | {ratio} | {row['target']} | {met} |")
    return "\n".join(lines)


def summarize(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (case, concurrency, server) over the rounds: median rates, highest peak RSS, summed errors."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault((point["case"], point["connections"], point["server"]), []).append(point)
    rows = []
    for (case, connections, server), group in groups.items():
        total_bytes = sum(p["bytes"] for p in group)
        rows.append({
            "case": case, "connections": connections, "server": server, "rounds": len(group),
            "requests_per_s": round(statistics.median(p["requests_per_s"] for p in group), 1),
            "mb_per_s": round(statistics.median(p["mb_per_s"] for p in group), 1),
            "mb_per_s_range": [min(p["mb_per_s"] for p in group), max(p["mb_per_s"] for p in group)],
            "p50_ms": round(statistics.median(p["p50_ms"] for p in group), 2),
            "p99_ms": max(p["p99_ms"] for p in group),
            "peak_rss_mb": max(p["peak_rss_mb"] for p in group),
            "cpu_s_per_gb": round(sum(p["cpu_s"] for p in group) / max(total_bytes, 1) * 1e9, 3),
            "errors": sum(p["errors"] for p in group),
        })
    return rows


def ratios(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nixforge/peer per (case, concurrency): throughput (higher is better), RSS and CPU per byte (lower is better)."""
    by_key = {(row["case"], row["connections"], row["server"]): row for row in summary}
    rows = []
    for case, connections, server in by_key:
        peer = by_key.get((case, connections, "distribution"))
        if server != "nixforge" or peer is None:
            continue
        ours = by_key[(case, connections, server)]
        rows.append({"case": case, "connections": connections}
                    | {key: _ratio(ours[key], peer[key])
                       for key in ("requests_per_s", "mb_per_s", "peak_rss_mb", "cpu_s_per_gb")})
    return rows


def _ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 2) if theirs else None


def table(results: dict[str, Any]) -> str:
    """The results as a plain-text table, one line per (case, concurrency), ratios nixforge/peer."""
    by_key = {(row["case"], row["connections"], row["server"]): row for row in results["summary"]}
    header = (f"{'case':13} {'conc':>4} | {'nixforge':>9} {'peer':>9} {'ratio':>5} req/s | "
              f"{'nixforge':>8} {'peer':>8} {'ratio':>5} MB/s | {'nixforge':>8} {'peer':>6} {'ratio':>5} peak RSS MB"
              f" | CPU/B ratio | errors")
    lines = [header, "-" * len(header)]
    for row in results["ratios"]:
        ours = by_key[(row["case"], row["connections"], "nixforge")]
        peer = by_key[(row["case"], row["connections"], "distribution")]
        lines.append(
            f"{row['case']:13} {row['connections']:>4} | {ours['requests_per_s']:>9} {peer['requests_per_s']:>9} "
            f"{row['requests_per_s']!s:>5} | {ours['mb_per_s']:>8} {peer['mb_per_s']:>8} {row['mb_per_s']!s:>5} | "
            f"{ours['peak_rss_mb']:>8} {peer['peak_rss_mb']:>6} {row['peak_rss_mb']!s:>5} | "
            f"{row['cpu_s_per_gb']!s:>11} | {ours['errors']}/{peer['errors']}")
    if not results["ratios"]:
        for row in results["summary"]:
            lines.append(f"{row['case']:13} {row['connections']:>4} | {row['server']}: "
                         f"{row['requests_per_s']} req/s, {row['mb_per_s']} MB/s, "
                         f"peak RSS {row['peak_rss_mb']} MB, errors {row['errors']}")
    large = sorted((row for row in results["summary"] if row["case"] == "blob-large" and row["server"] == "nixforge"),
                   key=lambda row: row["connections"])
    if len(large) > 1:
        lines.append(f"nixforge peak RSS, large blob: {large[0]['peak_rss_mb']} MB at c={large[0]['connections']}, "
                     f"{large[-1]['peak_rss_mb']} MB at c={large[-1]['connections']} "
                     f"(idle before {results['idle_rss_mb'].get('nixforge')} MB, "
                     f"after {results['idle_rss_after_mb'].get('nixforge')} MB)")
    return "\n".join(lines)


DEFAULT_POINTS = "blob-large:1,blob-large:16,manifest-tag:64,manifest-tag:1000"


def _points(text: str) -> list[tuple[str, int]]:
    points = []
    for item in text.split(","):
        case, _, clients = item.partition(":")
        if case not in CASES or not clients.isdigit():
            raise argparse.ArgumentTypeError(f"not case:clients with a case in {','.join(CASES)}: {item}")
        points.append((case, int(clients)))
    return points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per measurement (default 5)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds per point, servers alternating; medians are reported (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per case and server")
    parser.add_argument("--points", type=_points, default=_points(DEFAULT_POINTS),
                        help="comma-separated case:clients pairs measured with wrk (default " + DEFAULT_POINTS + ")")
    parser.add_argument("--curl-clients", type=lambda text: [int(n) for n in text.split(",") if n],
                        default=[1, 16], help="curl downloads at once of the big blob, per point (default 1,16)")
    parser.add_argument("--blob-mib", type=int, default=256, help="size of the large random file, in MiB")
    parser.add_argument("--closure-paths", type=int, default=100,
                        help="store paths in each cold-pull closure (default 100)")
    parser.add_argument("--cold-seconds", type=float, default=4.0,
                        help="seconds of manifest sampling during the cold-cache blob downloads")
    parser.add_argument("--twistd", default=default_twistd(), help="the twistd that has the nixforge plugin")
    parser.add_argument("--quick", action="store_true",
                        help="only the wrk and curl points: no pulls, no cold-cache figure")
    parser.add_argument("--peer-only", action="store_true",
                        help="measure distribution alone on a synthetic image (when nixforge cannot start)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    # A TERM (a timeout, a kill) unwinds like Ctrl-C, so the servers are stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    results = run(args)
    print(table(results))
    print()
    print(ratio_lines(results["round_ratios"]))
    print()
    print(figures_table(results))
    print()
    print("distribution's configuration:\n" + results.get("distribution_config", ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
