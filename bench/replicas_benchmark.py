"""Replicas benchmark: nixforge replicas on one S3 bucket against CNCF distribution's s3 driver, same SeaweedFS.

Usage (as root, from the repository):
    .venv/bin/python bench/replicas_benchmark.py --json replicas.json [--quick]

One SeaweedFS (`weed mini`, tests/s3_server.py) holds two buckets: `nixforge` (replicas A and B, and
a streaming replica S with NIXFORGE_S3_REDIRECT=false) and `distribution` (CNCF distribution 2.8.2,
`s3` driver, redirects on). Replica A builds an image holding one big random file; skopeo copies it
into distribution. Then, rounds alternating: (1) curl -L downloads of the big blob through the 307
to SeaweedFS, each registry's CPU per GB; (2) wrk on the manifest by tag against A alone and against
A and B at once; (3) cold pulls of fresh Nix-built images by concurrent skopeo clients, on A alone
and on A and B at once (one build under the lease, the other replica waits for its record).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.s3_server

from blob_ceiling import curl_downloads
from pull_figures import machine_and_versions, skopeo_to_layout, timed
from registry_peer import ServerProcess, s3_storage, skopeo_copy, start_peer
from serve_benchmark import (
    FLAKE_TEMPLATE,
    MANIFEST_ACCEPT,
    REPOSITORY,
    TAG,
    WRK_SCRIPT,
    check_blob,
    cpu_seconds,
    default_twistd,
    manifest_of,
    run_wrk,
    start_nixforge,
)

from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, SeaweedServer

# A package built cold under the lease: `seconds` of waiting, then `size` random bytes (a real blob).
COLD_PACKAGE = """\
    packages.x86_64-linux.%(name)s = derivation {
      name = "%(name)s-%(seed)s";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "PATH=/usr/bin:/bin; sleep %(seconds)s; mkdir -p $out; head -c %(size)d /dev/urandom > $out/data" ];
    };
"""
COLD_MODES = ("one", "two")


def log_count(server: ServerProcess, pattern: str) -> int:
    """How many times the replica's log matches `pattern`."""
    return len(re.findall(pattern, server.log_path.read_text(encoding="utf-8", errors="replace")))


def first_status(url: str) -> int:
    """The status of a GET of `url`, not following a redirect (307 when the blob is redirected); body unread."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(value, 2) for value in os.getloadavg()]


# -- set-up -------------------------------------------------------------------------------------


def write_flake(flake_dir: Path, args: argparse.Namespace) -> None:
    """The flake: `bigblob` (the big random file) and one fresh package per cold pull, `cold<round><mode>`."""
    seed = f"{os.getpid()}x{int(time.time())}"
    names = [f"cold{number}{mode}" for number in range(args.repeat) for mode in COLD_MODES]
    cold = "".join(COLD_PACKAGE % {"name": name, "seed": seed, "seconds": args.build_seconds,
                                   "size": args.cold_mib * 1024 * 1024} for name in names)
    flake_dir.mkdir(parents=True)
    (flake_dir / "flake.nix").write_text(
        FLAKE_TEMPLATE % {"name": REPOSITORY, "size": args.blob_mib * 1024 * 1024, "closures": cold}, encoding="utf-8")


def start_servers(stack: contextlib.ExitStack, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """SeaweedFS, replicas A and B and S (streaming) on bucket `nixforge`, distribution on `distribution`."""
    weed = SeaweedServer(work / "weed").start()
    stack.callback(weed.stop)
    for bucket in ("nixforge", "distribution"):
        weed.create_bucket(bucket)
    flake_dir = work / "flake"
    write_flake(flake_dir, args)
    store = {**weed.environ(), "NIXFORGE_STORE": "s3://nixforge"}

    def replica(name: str, **extra: str) -> ServerProcess:
        server = start_nixforge(work / name, flake_dir, args.twistd, extra_env={**store, **extra}, name=name)
        stack.callback(server.stop)
        return server

    a = replica("replica-a")
    print(f"first pull from replica A (build + assembly + upload): {timed(lambda: manifest_of(a)):.1f} s",
          file=sys.stderr)
    b = replica("replica-b")
    streaming = replica("replica-s", NIXFORGE_S3_REDIRECT="false")
    # distribution 2.8.2 panics when AWS_CA_BUNDLE is set; it gets its keys from its config only.
    peer_env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    peer = start_peer(work / "distribution", storage=s3_storage(weed.endpoint, "distribution", ACCESS_KEY,
                                                                SECRET_KEY, REGION), env=peer_env)
    stack.callback(peer.stop)
    skopeo_copy(f"docker://{a.host}/{REPOSITORY}:{TAG}", f"docker://{peer.host}/{REPOSITORY}:{TAG}")
    return {"weed": weed, "a": a, "b": b, "streaming": streaming, "peer": peer}


# -- 1. blob pulls through the redirect ---------------------------------------------------------


def blob_pulls(running: dict[str, Any], layer: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """curl -L downloads of the big blob from each registry in turn, per client count and round."""
    servers: list[ServerProcess] = [running["a"], running["peer"], running["streaming"]]
    weed_pid = running["weed"].process.pid
    points = []
    for clients in args.clients:
        for number in range(args.repeat):
            shift = number % len(servers)
            for server in servers[shift:] + servers[:shift]:
                url = f"{server.base_url}/v2/{REPOSITORY}/blobs/{layer['digest']}"
                before, weed_before = cpu_seconds(server.pid), cpu_seconds(weed_pid)
                report = curl_downloads(url, clients, args.duration, follow=True)
                used, weed_used = cpu_seconds(server.pid) - before, cpu_seconds(weed_pid) - weed_before
                seconds, gigabytes = report["duration_us"] / 1e6, report["bytes"] / 1e9
                point = {"server": server.name, "clients": clients, "round": number, "seconds": round(seconds, 2),
                         "downloads": report["requests"], "not_200": report["status"], "bytes": report["bytes"],
                         "mb_per_s": round(report["bytes"] / seconds / 1e6, 1), "cpu_s": round(used, 3),
                         "weed_cpu_s": round(weed_used, 3),
                         "cpu_s_per_gb": round(used / gigabytes, 3) if gigabytes else None,
                         "weed_cpu_s_per_gb": round(weed_used / gigabytes, 3) if gigabytes else None,
                         "load": load()}
                points.append(point)
                print(f"blob c={clients} {server.name:12} {point['mb_per_s']:>7} MB/s  "
                      f"{point['cpu_s_per_gb']} CPU-s/GB (weed {point['weed_cpu_s_per_gb']})  "
                      f"not 200: {point['not_200']}", file=sys.stderr)
    return points


# -- 2. manifest req/s, two replicas against one ------------------------------------------------


def wrk_at_once(targets: list[tuple[ServerProcess, int]], args: argparse.Namespace, script: Path) -> dict[str, Any]:
    """One wrk per (server, connections), all at once, on the manifest by tag: summed req/s, worst p99."""
    reports: list[dict[str, Any]] = [{} for _ in targets]

    def one(index: int, server: ServerProcess, connections: int) -> None:
        url = f"{server.base_url}/v2/{REPOSITORY}/manifests/{TAG}"
        reports[index] = run_wrk(url, connections, args.duration, script, MANIFEST_ACCEPT)

    threads = [threading.Thread(target=one, args=(index, server, connections))
               for index, (server, connections) in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if not all(reports):
        raise RuntimeError("a wrk run failed (see above)")
    return {
        "requests_per_s": round(sum(r["requests"] / (r["duration_us"] / 1e6) for r in reports), 1),
        "p99_ms": round(max(r["p99_us"] for r in reports) / 1000, 2),
        "p50_ms": round(max(r["p50_us"] for r in reports) / 1000, 2),
        "errors": sum(r[key] for r in reports for key in ("connect", "read", "write", "status", "timeout")),
        "load": load(),
    }


def manifest_rates(running: dict[str, Any], args: argparse.Namespace, script: Path) -> list[dict[str, Any]]:
    """Manifest by tag: A alone, A and B at once (connections split), distribution as reference."""
    a, b, peer = running["a"], running["b"], running["peer"]
    half = args.connections // 2
    setups: list[tuple[str, list[tuple[ServerProcess, int]]]] = [
        ("1 replica", [(a, args.connections)]),
        ("2 replicas", [(a, half), (b, args.connections - half)]),
        ("distribution", [(peer, args.connections)]),
    ]
    points = []
    for number in range(args.repeat):
        shift = number % len(setups)
        for label, targets in setups[shift:] + setups[:shift]:
            point = {"setup": label, "round": number, "connections": args.connections,
                     **wrk_at_once(targets, args, script)}
            points.append(point)
            print(f"manifest {label:12} {point['requests_per_s']:>9} req/s  p99 {point['p99_ms']} ms  "
                  f"errors {point['errors']}", file=sys.stderr)
    return points


# -- 3. cold pulls through the lease ------------------------------------------------------------


def cold_pulls(running: dict[str, Any], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Concurrent skopeo copies of a never-built image: from A alone, then from A and B at once."""
    a, b = running["a"], running["b"]
    points = []
    for number in range(args.repeat):
        modes = COLD_MODES if number % 2 == 0 else tuple(reversed(COLD_MODES))
        for mode in modes:
            name = f"cold{number}{mode}"  # a package of the flake (write_flake): never built before
            replicas = [a] if mode == "one" else [a, b]
            targets = [replicas[index % len(replicas)] for index in range(args.cold_clients)]
            failures: list[str] = []

            def pull(index: int, server: ServerProcess, name: str = name, failures: list[str] = failures) -> None:
                try:
                    skopeo_to_layout(server, name, TAG, work / f"{name}-{index}")
                except RuntimeError as error:
                    failures.append(str(error))

            threads = [threading.Thread(target=pull, args=(index, server)) for index, server in enumerate(targets)]
            began = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.monotonic() - began
            if failures:
                raise RuntimeError(f"cold pull of {name} failed: {failures[0]}")
            builds = {server.name: log_count(server, rf"build started {name}:{TAG} ") for server in (a, b)}
            # The replica that did not build waited for the other's record: "was built by another replica".
            served = {server.name: log_count(server, rf"{name}:{TAG} was built by another replica")
                      for server in (a, b)}
            point = {"mode": mode, "image": name, "round": number, "clients": args.cold_clients,
                     "seconds": round(seconds, 2), "builds": builds, "built_elsewhere": served, "load": load()}
            points.append(point)
            print(f"cold pull {name} on {len(replicas)} replica(s): {seconds:.2f} s, builds {builds}, "
                  f"served another's build {served}", file=sys.stderr)
            if sum(builds.values()) != 1:
                raise RuntimeError(f"{name}: expected exactly one `nix build` across the replicas, saw {builds}")
            if mode == "two" and sum(served.values()) < 1:
                raise RuntimeError(f"{name}: the replica that did not build never served the other's record")
    return points


# -- results ------------------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def _blob_totals(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median MB/s over the rounds; CPU over all rounds' bytes and downloads (CPU time has 10 ms ticks)."""
    gigabytes, downloads = sum(row["bytes"] for row in rows) / 1e9, sum(row["downloads"] for row in rows)
    cpu, weed = sum(row["cpu_s"] for row in rows), sum(row["weed_cpu_s"] for row in rows)
    return {"mb_per_s": _median(rows, "mb_per_s"),
            "cpu_s_per_gb": round(cpu / gigabytes, 4) if gigabytes else None,
            "cpu_ms_per_download": round(cpu * 1000 / downloads, 2) if downloads else None,
            "weed_cpu_s_per_gb": round(weed / gigabytes, 3) if gigabytes else None}


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours is not None and theirs else None


def figures(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per figure: the value, the reference it is set against, and the ratio."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, ours: float | None, theirs: float | None, versus: str, better: str) -> None:
        rows.append({"figure": figure, "value": ours, "reference": theirs, "versus": versus,
                     "ratio": _ratio(ours, theirs), "better": better})

    blobs = results["blob_pulls"]
    for clients in args.clients:
        totals = {name: _blob_totals([p for p in blobs if p["server"] == name and p["clients"] == clients])
                  for name in ("replica-a", "distribution", "replica-s")}
        for key, unit, better in (("mb_per_s", "MB/s (median)", "higher"),
                                  ("cpu_s_per_gb", "registry CPU-s/GB", "lower"),
                                  ("cpu_ms_per_download", "registry CPU ms per download", "lower"),
                                  ("weed_cpu_s_per_gb", "SeaweedFS CPU-s/GB", "lower")):
            ours = totals["replica-a"][key]
            add(f"blob GET via 307, {clients} curl -L at once: {unit}", ours, totals["distribution"][key],
                "distribution (307)", better)
            add(f"blob GET, {clients} curl at once: {unit}, streaming replica", totals["replica-s"][key],
                ours, "replica with 307", better)
    manifests = results["manifest"]
    by_setup = {label: [p for p in manifests if p["setup"] == label]
                for label in ("1 replica", "2 replicas", "distribution")}
    for key, unit, better in (("requests_per_s", "req/s", "higher"), ("p99_ms", "p99 ms", "lower")):
        one = _median(by_setup["1 replica"], key)
        add(f"manifest by tag, wrk -c{args.connections}: {unit}, 2 replicas", _median(by_setup["2 replicas"], key),
            one, "1 replica", better)
        add(f"manifest by tag, wrk -c{args.connections}: {unit}, 1 replica", one,
            _median(by_setup["distribution"], key), "distribution (s3 driver)", better)
    cold = results["cold_pull"]
    one, two = (_median([p for p in cold if p["mode"] == mode], "seconds") for mode in COLD_MODES)
    add(f"cold pull, {args.cold_clients} skopeo clients, {args.build_seconds} s build: seconds, 2 replicas "
        "(lease)", two, one, "1 replica", "lower")
    return rows


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table, with the date, machine, versions and load above it."""
    machine = results["machine"]
    versions = ", ".join(f"{name} {value}" for name, value in results["versions"].items())
    lines = [f"{results['date']}; {machine['nproc']} CPUs, {machine['memory_mib']} MiB, kernel {machine['kernel']}; "
             f"load average {results['load_before']} before, {results['load_after']} after",
             versions, f"settings: {json.dumps(results['settings'])}", "",
             "| figure | value | reference | against | ratio | better |", "|---|---|---|---|---|---|"]
    for row in results["figures"]:
        lines.append(f"| {row['figure']} | {row['value']} | {row['reference']} | {row['versus']} | "
                     f"{row['ratio']} | {row['better']} |")
    builds = [f"{p['image']}: {p['builds']}, {p['built_elsewhere']}" for p in results["cold_pull"]]
    lines += ["", "per cold image, `build started` lines per replica, then `was built by another replica` lines: "
              + "; ".join(builds), f"first status of a blob GET (redirect or not): {results['first_status']}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, measure the three figures, stop everything; return the results."""
    results: dict[str, Any] = {**machine_and_versions(args.twistd), "load_before": load(),
                               "settings": {key: value for key, value in vars(args).items()
                                            if key not in ("json", "twistd")}}
    with tempfile.TemporaryDirectory(prefix="nixforge-replicas-") as temp, contextlib.ExitStack() as stack:
        work = Path(temp)
        try:
            running = start_servers(stack, work, args)
            manifest, _ = manifest_of(running["a"])
            layer = max(manifest["layers"], key=lambda layer: layer["size"])
            for name in ("a", "b", "streaming", "peer"):
                check_blob(running[name], layer)  # follows the 307; checks digest and size
            results["blob"] = layer
            results["first_status"] = {running[name].name: first_status(
                f"{running[name].base_url}/v2/{REPOSITORY}/blobs/{layer['digest']}")
                for name in ("a", "streaming", "peer")}
            results["distribution_config"] = (work / "distribution" / "config.yml").read_text(encoding="utf-8")
            results["blob_pulls"] = blob_pulls(running, layer, args)
            script = work / "report.lua"
            script.write_text(WRK_SCRIPT, encoding="utf-8")
            results["manifest"] = manifest_rates(running, args, script)
            results["cold_pull"] = cold_pulls(running, args, work)
        except BaseException:
            for path in sorted(work.glob("*/*.log")):
                tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
                print(f"--- {path.relative_to(work)} ---\n" + "\n".join(tail), file=sys.stderr)
            raise
    results["load_after"] = load()
    results["figures"] = figures(results, args)
    return results


def _numbers(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --quick shrinks every default for a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--duration", type=int, help="seconds per blob or manifest measurement (default 5)")
    parser.add_argument("--repeat", type=int, help="rounds, setups alternating; medians reported (default 3)")
    parser.add_argument("--blob-mib", type=int, help="size of the big random file, MiB (default 256)")
    parser.add_argument("--clients", type=_numbers, help="curl -L downloads at once, per point (default 1,8)")
    parser.add_argument("--connections", type=int, help="wrk connections on the manifest, split over the replicas "
                                                        "(default 64)")
    parser.add_argument("--cold-clients", type=int, help="concurrent skopeo clients per cold pull (default 4)")
    parser.add_argument("--build-seconds", type=float, help="seconds each cold image's build takes (default 8)")
    parser.add_argument("--cold-mib", type=int, help="random MiB in each cold image (default 8)")
    parser.add_argument("--twistd", default=default_twistd(), help="the twistd that has the nixforge plugin")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s points, 1 round, small blobs")
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = {"duration": 5, "repeat": 3, "blob_mib": 256, "clients": [1, 8], "connections": 64,
                                "cold_clients": 4, "build_seconds": 8, "cold_mib": 8}
    if args.quick:
        defaults.update(duration=2, repeat=1, blob_mib=64, clients=[1, 4], build_seconds=3, cold_mib=2)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    # A TERM unwinds like Ctrl-C: every process is stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = run(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
