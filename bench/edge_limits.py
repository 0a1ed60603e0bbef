"""Probe the HTTP edge of a real `twistd -n nixforge` from outside, as issue 7's probe did, and print figures.

    .venv/bin/python bench/edge_limits.py [--clients 1000] [--sources 16] [--trickle 50] [--json out.json]

Starts `twistd -y forge.tac` on 127.0.0.1 (numeric port, so the listen backlog setting applies) with an
empty flake and NIXFORGE_NIX=/bin/false (nothing here needs a build); other NIXFORGE_* variables in the
environment (caps, backlog, timeouts) pass through. Then it measures:
- a PUT declaring a 1 GiB body: time to the answer, and that no body byte had to be sent;
- `--trickle` clients sending their request head one byte every 2 s: how many get 408, and when;
- `--clients` clients connecting at once to /v2/ from `--sources` loopback addresses: connects refused
  or dropped, statuses, latency p50/p99; and the listen backlog `ss` reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LISTENING = re.compile(rb"nixforge listening on \S+:(\d+)")


def start_registry(work: Path, twistd: Path) -> tuple[subprocess.Popen[bytes], int]:
    (work / "flake").mkdir()
    env = dict(os.environ)  # other NIXFORGE_* settings (caps, backlog, timeouts) pass through
    env.update({"FLASK_HOST": "127.0.0.1", "FLASK_PORT": "0", "GITHUB_REPO": f"path:{work / 'flake'}",
                "NIXFORGE_DATA_DIR": str(work / "data"), "NIXFORGE_NIX": "/bin/false", "LOG_LEVEL": "INFO"})
    log = work / "twistd.log"
    process = subprocess.Popen([str(twistd), "-n", "--pidfile=", f"--logfile={log}", "-y", str(REPO / "forge.tac")],
                               env=env, stdin=subprocess.DEVNULL, cwd=work)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        match = LISTENING.search(log.read_bytes()) if log.exists() else None
        if match:
            return process, int(match.group(1))
        time.sleep(0.1)
    process.kill()
    raise SystemExit("twistd did not start listening")


def gigabyte_put(port: int) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(b"PUT /v2/x/blobs/uploads/y HTTP/1.1\r\nHost: r\r\nContent-Length: 1073741824\r\n\r\n")
        answer = sock.recv(65536)
        elapsed = time.monotonic() - started
    return {"status": int(answer.split()[1]), "answer_ms": round(elapsed * 1000, 1), "body_bytes_sent": 0}


async def trickler(port: int, interval: float) -> tuple[int | None, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    head = b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nUser-Agent: trickle\r\n\r\n"
    status = None
    for byte in head:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), interval)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if answer:
            status = int(answer.split()[1])
        break
    writer.close()
    return status, time.monotonic() - started


async def one_client(port: int, source: str) -> tuple[str, float]:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 30)
    except (TimeoutError, OSError) as error:
        return f"connect failed: {type(error).__name__}", time.monotonic() - started
    try:
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 30)
        outcome = answer.split()[1].decode() if answer else "closed without answer"
    except (TimeoutError, OSError) as error:
        outcome = f"dropped: {type(error).__name__}"
    writer.close()
    return outcome, time.monotonic() - started


async def crowd(port: int, clients: int, sources: int) -> dict[str, object]:
    results = await asyncio.gather(*(one_client(port, f"127.0.1.{1 + n % sources}") for n in range(clients)))
    outcomes: dict[str, int] = {}
    for outcome, _ in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    latencies = sorted(elapsed for _, elapsed in results)
    return {"clients": clients, "sources": sources, "outcomes": outcomes,
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1)}


def backlog(port: int) -> int:
    listing = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
    return int(listing.stdout.split()[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=16)
    parser.add_argument("--trickle", type=int, default=50)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--twistd", type=Path, default=Path(sys.executable).parent / "twistd")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nf-edge-") as work:
        process, port = start_registry(Path(work), args.twistd)
        try:
            figures: dict[str, object] = {"listen_backlog": backlog(port), "gigabyte_put": gigabyte_put(port)}

            async def trickle_all() -> list[tuple[int | None, float]]:
                return await asyncio.gather(*(trickler(port, 2.0) for _ in range(args.trickle)))

            trickled = asyncio.run(trickle_all()) if args.trickle else [(None, 0.0)]
            figures["trickle"] = {
                "clients": args.trickle, "got_408": sum(1 for status, _ in trickled if status == 408),
                "still_open": sum(1 for status, _ in trickled if status is None),
                "cut_off_after_s": round(max(elapsed for _, elapsed in trickled), 1),
            }
            figures["crowd"] = asyncio.run(crowd(port, args.clients, args.sources))
        finally:
            process.terminate()
            process.wait(30)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
