"""copy_range over a real socket pair (exact bytes, non-blocking restored, a stall, a closed peer) and
CopyThreads (the cap, the mode "auto" picks, the result handed back)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from nixforge.api import copy_threads
from nixforge.api.copy_threads import READ_BUFFER, CopyResult, CopyThreads, copy_range

SIZE = 3 * READ_BUFFER + 4321


@pytest.fixture
def source(tmp_path: Path):
    data = os.urandom(SIZE)
    path = tmp_path / "blob"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def drain(sock: socket.socket, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := sock.recv(1 << 20):
            into.extend(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["read", "sendfile"])
def test_a_range_arrives_exactly_and_the_socket_is_non_blocking_again(source, mode: str) -> None:
    fd, data = source
    server, client = socket.socketpair()
    server.setblocking(False)
    received = bytearray()
    reader = drain(client, received)
    with server, client:
        result = copy_range(server.fileno(), fd, 1000, SIZE - 2000, 5.0, mode)
        assert result == CopyResult(SIZE - 2000)
        assert not os.get_blocking(server.fileno())
        server.shutdown(socket.SHUT_WR)
        reader.join(10)
    assert bytes(received) == data[1000:SIZE - 1000]


@pytest.mark.parametrize("mode", ["read", "sendfile"])
def test_a_peer_that_stops_reading_is_a_stall_and_a_closed_one_is_gone(source, mode: str) -> None:
    fd, _ = source
    server, client = socket.socketpair()
    with server, client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled = copy_range(server.fileno(), fd, 0, SIZE, 0.2, mode)
        assert stalled.stopped == "stalled" and 0 < stalled.sent < SIZE
        client.close()
        assert copy_range(server.fileno(), fd, 0, SIZE, 0.2, mode).stopped == "gone"


def test_a_file_shorter_than_promised_is_short(source) -> None:
    fd, _ = source
    server, client = socket.socketpair()
    received = bytearray()
    reader = drain(client, received)
    with server, client:
        assert copy_range(server.fileno(), fd, SIZE - 10, 100, 5.0, "read") == CopyResult(10, "short")
        server.shutdown(socket.SHUT_WR)
        reader.join(10)


def test_threads_are_capped_auto_reads_for_the_first_two_and_results_come_back(monkeypatch) -> None:
    release = threading.Event()
    modes: list[str] = []
    results: list[CopyResult] = []
    done = threading.Semaphore(0)

    def fake_copy(sock_fd: int, source_fd: int, offset: int, length: int, timeout: float, mode: str) -> CopyResult:
        modes.append(mode)
        release.wait(10)
        return CopyResult(length)

    def hand_back(function, result: CopyResult) -> None:
        function(result)
        done.release()

    monkeypatch.setattr(copy_threads, "copy_range", fake_copy)
    threads = CopyThreads(hand_back, max_threads=3, mode="auto")
    assert [threads.try_copy(1, 2, 0, n, 1.0, results.append) for n in (10, 20, 30, 40)] == [True, True, True, False]
    assert threads.active == 3
    release.set()
    for _ in range(3):
        assert done.acquire(timeout=10)
    assert sorted(modes) == ["read", "read", "sendfile"]
    assert sorted(result.sent for result in results) == [10, 20, 30]
    assert (threads.active, threads.started) == (0, 3)


def test_a_copy_thread_runs_below_the_reactor_threads_priority() -> None:
    """The thread that calls it gets COPY_NICENESS more niceness; the calling (reactor) thread keeps its own."""
    import os
    import threading

    from nixforge.api.copy_threads import COPY_NICENESS, _yield_to_the_reactor

    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def copy() -> None:
        _yield_to_the_reactor()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=copy)
    thread.start()
    thread.join()
    assert seen == [min(main + COPY_NICENESS, 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main
