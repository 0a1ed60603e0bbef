"""The blob figures as clients measure them: one `curl` per download, and the probe servers as the ceiling."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from registry_peer import ServerProcess, spawn, wait_until

PROBE_MODES = ("sendfile", "read")
PROBE_LISTENING = re.compile(rb"probe listening on 127\.0\.0\.1:(\d+)")


def save_blob(url: str, path: Path) -> None:
    """Download `url` into `path` (the probe servers serve this copy)."""
    with urllib.request.urlopen(url, timeout=600) as response, open(path, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def start_probes(blob: Path, workdir: Path) -> list[ServerProcess]:
    """Start one probe server per mode on the saved blob; return them once each printed its port."""
    probes: list[ServerProcess] = []
    script = Path(__file__).resolve().parent / "probe_server.py"
    try:
        for mode in PROBE_MODES:
            log_path = workdir / f"probe-{mode}.log"
            process = spawn([sys.executable, str(script), str(blob), "--mode", mode], log_path, workdir)
            found: list[int] = []

            def listening(log_path: Path = log_path, found: list[int] = found) -> bool:
                match = PROBE_LISTENING.search(log_path.read_bytes())
                if match:
                    found.append(int(match.group(1)))
                return bool(match)

            wait_until(listening, process, f"probe {mode}", 30)
            probes.append(ServerProcess(f"probe-{mode}", process, found[0], log_path))
    except BaseException:
        for probe in probes:
            probe.stop()
        raise
    return probes


def curl_downloads(url: str, clients: int, duration: float, timeout: float = 600.0,
                   follow: bool = False) -> dict[str, Any]:
    """Batches of `clients` curl processes at once, each one GET on its own connection, until `duration`
    seconds have passed (one batch at least); all bytes over the wall time of the batches.

    `follow`: follow redirects (`curl -L`); the status and bytes counted are then those of the last hop."""
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", str(int(timeout)), "-w", "%{http_code} %{size_download}",
            *(["-L"] if follow else [])]
    began = time.monotonic()
    codes: list[str] = []
    total = 0
    while not codes or time.monotonic() - began < duration:
        processes = [subprocess.Popen([*argv, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                     for _ in range(clients)]
        outputs = [process.communicate(timeout=timeout + 30)[0].split() for process in processes]
        codes += [output[0] if output else "000" for output in outputs]
        total += sum(int(output[1]) for output in outputs if len(output) == 2)
    seconds = time.monotonic() - began
    return {"requests": len(codes), "bytes": total, "duration_us": int(seconds * 1e6),
            "connect": 0, "read": 0, "write": 0, "timeout": 0, "status": sum(code != "200" for code in codes),
            "p50_us": 0, "p99_us": 0}


def round_ratios(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every round's nixforge MB/s over distribution's and over the best probe's, per (tool, case, clients)."""
    rows = []
    keys = sorted({(p.get("tool", "wrk"), p["case"], p["connections"], p["round"])
                   for p in points if p["case"].startswith("blob")})
    for tool, case, clients, number in keys:
        rates = {p["server"]: p["mb_per_s"] for p in points
                 if (p.get("tool", "wrk"), p["case"], p["connections"], p["round"]) == (tool, case, clients, number)}
        ours = rates.get("nixforge")
        probe = max((rate for name, rate in rates.items() if name.startswith("probe-")), default=None)
        peer = rates.get("distribution")
        rows.append({"tool": tool, "case": case, "clients": clients, "round": number, "mb_per_s": rates,
                     "vs_distribution": round(ours / peer, 2) if ours and peer else None,
                     "vs_best_probe": round(ours / probe, 2) if ours and probe else None})
    return rows


def ratio_lines(rows: list[dict[str, Any]]) -> str:
    """The per-round ratios as text lines."""
    lines = []
    for row in rows:
        rates = ", ".join(f"{name} {rate}" for name, rate in sorted(row["mb_per_s"].items()))
        lines.append(f"{row['tool']:4} {row['case']} c={row['clients']:<3} round {row['round']}: "
                     f"x{row['vs_distribution']} of distribution, x{row['vs_best_probe']} of the best probe "
                     f"(MB/s: {rates})")
    return "\n".join(lines)


def median_ratio(rows: list[dict[str, Any]], tool: str, clients: int, key: str) -> float | None:
    """The median over rounds of one ratio column."""
    values = [row[key] for row in rows if (row["tool"], row["clients"]) == (tool, clients) and row[key] is not None]
    return round(statistics.median(values), 2) if values else None
