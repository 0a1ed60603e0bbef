"""What metrics and the access log cost: manifest-by-tag req/s of a real twistd with them on and off.

Usage (from the repository):
    .venv/bin/python bench/observability_cost.py [--seconds 10] [--connections 16] [--rounds 3] [--json out.json]

nixforge builds `hello` of the test fixture flake once; then, on the same data dir (a stored image:
no Nix per request), `twistd -n nixforge` is started once per mode and `wrk` fetches the manifest by
tag for `--seconds` at `--connections`. Modes: both on (the default), metrics only, access log only,
both off (NIXFORGE_METRICS=off, NIXFORGE_ACCESS_LOG=off). Rounds alternate the modes so the machine's
noise spreads over all of them; the best round of each mode is reported, with its ratio to "off".
The log goes to a pipe drained by a thread, as under systemd's journal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from e2e_support import FIXTURE_FLAKES, nix_env, prepare_flake  # noqa: E402

LISTENING = re.compile(r"nixforge listening on 127\.0\.0\.1:(\d+)")
REQUESTS_PER_SECOND = re.compile(r"Requests/sec:\s+([0-9.]+)")
ACCEPT = "application/vnd.oci.image.manifest.v1+json"
MODES = {
    "metrics+access-log": {},
    "metrics only": {"NIXFORGE_ACCESS_LOG": "off"},
    "access log only": {"NIXFORGE_METRICS": "off"},
    "off": {"NIXFORGE_METRICS": "off", "NIXFORGE_ACCESS_LOG": "off"},
}


class Forge:
    """One `twistd -n nixforge` on 127.0.0.1 port 0, its log drained (and counted) by a thread."""

    def __init__(self, flake: Path, data_dir: Path, work_dir: Path, env: dict[str, str]) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(REPO / ".venv" / "bin" / "twistd"), "-n", f"--pidfile={work_dir / 'twistd.pid'}", "nixforge",
                "--port", "tcp:0:interface=127.0.0.1", "--flake", f"path:{flake}", "--data-dir", str(data_dir),
                "--log-level", "INFO"]
        self.lines = 0
        self.process = subprocess.Popen(argv, env={**nix_env(), **env}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, cwd=work_dir)
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise SystemExit("twistd ended before listening")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            self.lines += 1

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def wrk(port: int, seconds: int, connections: int) -> float:
    """Manifest-by-tag requests per second as wrk reports them."""
    output = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "-H", f"Accept: {ACCEPT}",
         f"http://127.0.0.1:{port}/v2/hello/manifests/latest"],
        capture_output=True, text=True, check=True).stdout
    match = REQUESTS_PER_SECOND.search(output)
    if match is None:
        raise SystemExit(f"no Requests/sec in wrk's output:\n{output}")
    return float(match.group(1))


def main() -> None:
    """Build once, then measure every mode `--rounds` times; print (and optionally save) the best of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    root = Path(tempfile.mkdtemp(prefix="nixforge-observability-"))
    flake = prepare_flake(FIXTURE_FLAKES / "forge", root / "flake", secrets.token_hex(6))
    data_dir = root / "data"
    forge = Forge(flake, data_dir, root / "build", {})
    request = urllib.request.Request(f"http://127.0.0.1:{forge.port}/v2/hello/manifests/latest",
                                     headers={"Accept": ACCEPT})
    with urllib.request.urlopen(request, timeout=600) as response:
        assert response.status == 200
    forge.stop()
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    log_lines: dict[str, int] = {}
    for round_number in range(options.rounds):
        for mode, env in MODES.items():
            forge = Forge(flake, data_dir, root / "serve", env)
            wrk(forge.port, 1, options.connections)  # warm-up
            results[mode].append(wrk(forge.port, options.seconds, options.connections))
            time.sleep(0.5)  # let the drain thread catch up before counting
            log_lines[mode] = forge.lines
            forge.stop()
            print(f"round {round_number + 1} {mode}: {results[mode][-1]:.0f} req/s", flush=True)
    off = max(results["off"])
    summary = {mode: {"best_rps": max(values), "rounds": values, "ratio_to_off": max(values) / off,
                      "log_lines_last_round": log_lines[mode]} for mode, values in results.items()}
    print(f"\nmanifest by tag, {options.connections} connections, {options.seconds} s, best of {options.rounds}:")
    for mode, row in summary.items():
        print(f"  {mode:20} {row['best_rps']:8.0f} req/s  {row['ratio_to_off']:.3f} of off")
    if options.json:
        options.json.write_text(json.dumps({"cpus": os.cpu_count(), "results": summary}, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
