"""The HTTP edge of a real `twistd -n nixforge` over real TCP: bodies, deadlines, caps, stalls, backlog, leaks."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import OCI_ACCEPT, ForgeFactory, ForgeProcess, run_tool, wait_until

REPO = Path(__file__).resolve().parents[2]


def connect(forge: ForgeProcess, source: str = "127.0.0.1", receive_buffer: int | None = None) -> socket.socket:
    """A TCP connection to the registry from a chosen loopback source address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind((source, 0))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", forge.port))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


def status_and_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw[:500]
    return int(head.split()[1]), json.loads(body)["errors"][0]


def open_files(forge: ForgeProcess) -> list[str]:
    """The files twistd has open, from /proc."""
    assert forge._process is not None
    fd_dir = Path(f"/proc/{forge._process.pid}/fd")
    found = []
    for fd in fd_dir.iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def edge_forge(tmp_path_factory: pytest.TempPathFactory, flake_ref: str) -> Iterator[ForgeProcess]:
    work_dir = tmp_path_factory.mktemp("edge-forge")
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=work_dir / "data", work_dir=work_dir, extra_args=[
        "--header-timeout", "2", "--send-timeout", "2", "--max-client-connections", "4", "--max-connections", "40",
    ]).start()
    yield forge
    forge.stop()


def test_a_gigabyte_put_is_answered_before_its_body(edge_forge: ForgeProcess) -> None:
    """A PUT that declares 1 GiB gets 405 at once, with no byte of body sent, and the connection closes."""
    with connect(edge_forge) as sock:
        started = time.monotonic()
        sock.sendall(b"PUT /v2/hello/blobs/uploads/x HTTP/1.1\r\nHost: r\r\nContent-Length: 1073741824\r\n\r\n")
        status, error = status_and_error(read_all(sock))
        assert time.monotonic() - started < 1.5
    assert (status, error["code"]) == (405, "UNSUPPORTED")


def test_trickled_heads_are_cut_off_with_408(edge_forge: ForgeProcess) -> None:
    """Clients sending their head a byte every 0.4 s get 408 at the 2 s deadline, then a close."""
    head = b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nUser-Agent: slowloris\r\n\r\n"
    socks = [connect(edge_forge, source=f"127.0.0.{10 + n}") for n in range(3)]
    started = time.monotonic()
    answers: dict[int, bytes] = {}
    for byte in head:
        for number, sock in enumerate(socks):
            if number in answers:
                continue
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                answers[number] = read_all(sock)
        if len(answers) == len(socks):
            break
        time.sleep(0.4)
    for number, sock in enumerate(socks):
        answers.setdefault(number, read_all(sock))
        sock.close()
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 5, elapsed
    for raw in answers.values():
        assert status_and_error(raw)[0] == 408


def test_stalled_clients_hold_no_slot_a_fast_client_needs(edge_forge: ForgeProcess) -> None:
    """Four silent connections from 127.0.0.2 fill that address's cap (a fifth gets 503 JSON); 127.0.0.1 is served."""
    stalled = [connect(edge_forge, source="127.0.0.2") for _ in range(4)]
    try:
        assert wait_until(lambda: edge_forge.get("/v2/").status == 200, 5)
        with connect(edge_forge, source="127.0.0.2") as extra:
            status, error = status_and_error(read_all(extra))
        assert (status, error["code"]) == (503, "UNAVAILABLE")
        for _ in range(10):
            assert edge_forge.get("/v2/").status == 200
    finally:
        for sock in stalled:
            sock.close()


def test_a_client_that_stops_reading_a_blob_is_dropped_and_the_file_closed(edge_forge: ForgeProcess) -> None:
    """A 30 MiB layer requested by a client that never reads: after the send timeout the connection
    is dropped before the body is complete, and twistd no longer holds the blob file open."""
    manifest = edge_forge.manifest("tool-a").json()
    layer = max(manifest["layers"], key=lambda layer: layer["size"])
    assert layer["size"] > 20 * 1024 * 1024
    blob_file = f"blobs/sha256/{layer['digest'].split(':')[1]}"
    with connect(edge_forge, source="127.0.0.3", receive_buffer=4096) as sock:
        sock.sendall(f"GET /v2/tool-a/blobs/{layer['digest']} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
        assert wait_until(lambda: any(path.endswith(blob_file) for path in open_files(edge_forge)), 10)
        assert wait_until(lambda: not any(path.endswith(blob_file) for path in open_files(edge_forge)), 20), \
            "the blob file stayed open"
        received = read_all(sock)
    assert b"200 OK" in received[:100]
    assert len(received) < layer["size"]
    assert edge_forge.matching_lines(re.compile("the response stalled"))


def test_the_listen_backlog_is_raised(tmp_path: Path, flake_ref: str) -> None:
    """`twistd -y forge.tac` on a numeric port listens with a backlog of 1024 (ss shows it as Send-Q)."""
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=tmp_path / "data", work_dir=tmp_path, tac=REPO / "forge.tac")
    forge.start()
    try:
        listing = run_tool(["ss", "-Hltn", f"sport = :{forge.port}"]).stdout.split()
        assert listing[0] == "LISTEN" and listing[2] == "1024", listing
    finally:
        forge.stop()


def test_a_failed_build_shows_its_log_but_no_host_path(edge_forge: ForgeProcess, flake_dir: Path) -> None:
    """The fixture flake lives under /tmp: a failed build's answer keeps the log tail but not that path."""
    response = edge_forge.get("/v2/broken/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 500
    text = response.body.decode()
    assert "deliberate failure" in text
    assert str(flake_dir) not in text and "/tmp/" not in text, text


def test_the_log_tail_can_be_turned_off(forge_factory: ForgeFactory) -> None:
    """--error-log-tail off: the failed build's answer has no log lines at all."""
    forge = forge_factory("quiet", extra_args=["--error-log-tail", "off"])
    response = forge.get("/v2/broken/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 500
    assert "deliberate failure" not in response.body.decode()
    assert "log" not in (response.json()["errors"][0]["detail"] or {})



def test_the_access_log_has_one_line_per_request_in_order_and_all_of_them_at_shutdown(
    tmp_path: Path, flake_ref: str
) -> None:
    """200 requests on one keep-alive connection give 200 access-log lines in their order; the last ones,
    still waiting for their batch when SIGTERM comes, are written at shutdown."""
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=tmp_path / "data", work_dir=tmp_path, log_level="INFO").start()
    try:
        tokens = [f"order{number:04d}" for number in range(200)]
        with connect(forge) as sock:
            for token in tokens:
                sock.sendall(f"GET /v2/?t={token} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
                response = b""
                while b"\r\n\r\n" not in response or not response.endswith(b"}"):
                    response += sock.recv(65536)
        forge.stop()
        pattern = re.compile(r"access_log#info\] GET /v2/\?t=(order\d{4}) 200 ")
        assert [m.group(1) for line in forge.lines if (m := pattern.search(line))] == tokens
    finally:
        forge.stop()
