"""The ceiling probe: a minimal HTTP file server, a thread per connection, no framework; one file for every GET.

    python bench/probe_server.py FILE --mode sendfile|read [--port 0]

`sendfile`: one blocking `os.sendfile` of the whole file per request; `read`: `read` + `sendall` with
1 MiB buffers. Keep-alive (wrk reuses connections), HTTP/1.1 only, headers ignored. Prints
`probe listening on 127.0.0.1:PORT` once bound. Used by serve_benchmark.py as the machine's ceiling.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading

BUFFER = 1024 * 1024


def _read_head(conn: socket.socket, pending: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in pending:
        data = conn.recv(65536)
        if not data:
            return None
        pending += data
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    pending[:] = rest
    return head


def serve(conn: socket.socket, path: str, size: int, mode: str) -> None:
    """Answer every request on `conn` with the whole file until the client closes."""
    pending = bytearray()
    with conn, open(path, "rb", buffering=0) as file:
        buffer = bytearray(BUFFER)
        while (head := _read_head(conn, pending)) is not None:
            method = head.split(b" ", 1)[0]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % size)
            if method == b"HEAD":
                continue
            if mode == "sendfile":
                offset = 0
                while offset < size:
                    offset += os.sendfile(conn.fileno(), file.fileno(), offset, size - offset)
            else:
                file.seek(0)
                while count := file.readinto(buffer):
                    conn.sendall(memoryview(buffer)[:count])


def main(argv: list[str] | None = None) -> int:
    """Listen on 127.0.0.1 and serve the file, a thread per connection, until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--mode", choices=("sendfile", "read"), default="sendfile")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    size = os.path.getsize(args.file)
    listener = socket.create_server(("127.0.0.1", args.port), backlog=1024)
    print(f"probe listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()

        def run(conn: socket.socket = conn) -> None:
            try:
                serve(conn, args.file, size, args.mode)
            except OSError:
                pass

        threading.Thread(target=run, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
