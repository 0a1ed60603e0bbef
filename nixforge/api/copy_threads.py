"""Copy a file range to a socket on a thread of its own, the socket blocking meanwhile: both cores work."""

from __future__ import annotations

import errno
import mmap
import os
import socket
import struct
import threading
from collections.abc import Callable

from attrs import define, field, frozen

# Bytes per read in "read" mode (pread into one buffer, then write it whole): big enough that the
# per-call cost vanishes, small enough that 32 copies at once hold 32 MiB.
READ_BUFFER = 1024 * 1024
# At most this many bytes per sendfile call (the kernel caps one call near 2 GiB anyway).
SENDFILE_CALL = 1 << 30
COPY_MODES = ("auto", "read", "sendfile")
# In "auto" mode, this many copies at once use "read", the rest "sendfile" (less CPU, no buffer). On
# the bench machine "read" was faster with 1 and with 16 clients, so "read" is the default.
AUTO_READ_COPIES = 2
UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK})
_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ESHUTDOWN, errno.ENOTCONN, errno.EBADF})


@frozen
class CopyResult:
    """What a copy did: bytes sent, and why it stopped early (None when all was sent).

    `stopped` is one of "stalled" (no byte accepted for the send timeout), "gone" (the peer or the
    server closed the socket), "short" (the file ended early), "unsupported" (sendfile refused before
    any byte: the caller may try another way), or "error: <text>".
    """

    sent: int
    stopped: str | None = None


def _send_timeout(sock_fd: int, seconds: float) -> None:
    """Set SO_SNDTIMEO: a blocking send that moves no byte for `seconds` fails with EAGAIN (0: never)."""
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock = socket.socket(fileno=sock_fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.detach()


def copy_range(sock_fd: int, source_fd: int, offset: int, length: int, timeout: float, mode: str) -> CopyResult:
    """Send `length` bytes of `source_fd` from `offset` to `sock_fd`, blocking; restore non-blocking after.

    The socket's file description is shared with the reactor's descriptor; the reactor does not write
    to it while a body is being copied, and it reads only when the kernel says there is something to
    read, so blocking meanwhile is harmless. A send that moves nothing for `timeout` seconds ends the
    copy as "stalled".
    """
    os.set_blocking(sock_fd, True)
    _send_timeout(sock_fd, timeout)
    try:
        if mode == "sendfile":
            return _copy_sendfile(sock_fd, source_fd, offset, length)
        return _copy_read(sock_fd, source_fd, offset, length)
    finally:
        try:
            _send_timeout(sock_fd, 0)
            os.set_blocking(sock_fd, False)
        except OSError:
            pass


def _failure(error: OSError, sent: int) -> CopyResult:
    if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
        return CopyResult(sent, "stalled")
    if error.errno in _GONE:
        return CopyResult(sent, "gone")
    if error.errno in UNSUPPORTED and sent == 0:
        return CopyResult(sent, "unsupported")
    return CopyResult(sent, f"error: {error}")


def _copy_sendfile(sock_fd: int, source_fd: int, offset: int, length: int) -> CopyResult:
    sent = 0
    while sent < length:
        try:
            count = os.sendfile(sock_fd, source_fd, offset + sent, min(length - sent, SENDFILE_CALL))
        except OSError as error:
            return _failure(error, sent)
        if count == 0:
            return CopyResult(sent, "short")
        sent += count
    return CopyResult(sent)


def _copy_read(sock_fd: int, source_fd: int, offset: int, length: int) -> CopyResult:
    # An anonymous mapping, not a bytearray: its pages go back to the system when it is closed (a
    # freed 1 MiB malloc block raises glibc's mmap threshold, and the next ones stay in the process).
    with mmap.mmap(-1, min(READ_BUFFER, length)) as buffer, memoryview(buffer) as view:
        sent = 0
        while sent < length:
            want = min(len(view), length - sent)
            try:
                got = os.preadv(source_fd, [view[:want]], offset + sent)
            except OSError as error:
                return CopyResult(sent, f"error: {error}")
            if got == 0:
                return CopyResult(sent, "short")
            written = 0
            while written < got:
                try:
                    written += os.write(sock_fd, view[written:got])
                except OSError as error:
                    return _failure(error, sent + written)
            sent += got
        return CopyResult(sent)


COPY_NICENESS = 10
"""How much lower than the reactor's a copy thread's CPU priority is (Linux nice, per thread)."""


def _yield_to_the_reactor() -> None:
    """Lower this thread's CPU priority, so the reactor thread is scheduled first on a busy machine.

    A copy spends its time in syscalls; what it must not do is keep the reactor (a manifest, a
    health check) waiting for a CPU. On Linux, setpriority on a thread id applies to that thread only.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COPY_NICENESS)
    except (OSError, AttributeError):
        pass  # not permitted or not Linux: copy at the same priority


@define(eq=False)
class CopyThreads:
    """Run copies on threads of their own, at most `max_threads` at once (more: the caller sends otherwise).

    `call_from_thread` hands the result back to the reactor thread (`reactor.callFromThread`). `mode`
    is "read", "sendfile", or "auto": "read" for the first AUTO_READ_COPIES copies at once, else
    "sendfile".
    """

    call_from_thread: Callable[..., object]
    max_threads: int = 32
    mode: str = "read"
    active: int = field(default=0, init=False)
    started: int = field(default=0, init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)

    def try_copy(self, sock_fd: int, source_fd: int, offset: int, length: int, timeout: float,
                 done: Callable[[CopyResult], None]) -> bool:
        """Start copying on a new thread and return True; False (nothing started) when all threads are busy.

        `done` is called on the reactor thread with the CopyResult.
        """
        with self._lock:
            if self.active >= self.max_threads:
                return False
            self.active += 1
            self.started += 1
            mode = self.mode
            if mode == "auto":
                mode = "read" if self.active <= AUTO_READ_COPIES else "sendfile"

        def run() -> None:
            _yield_to_the_reactor()
            try:
                result = copy_range(sock_fd, source_fd, offset, length, timeout, mode)
            except BaseException as error:  # reported to the reactor, never lost
                result = CopyResult(0, f"error: {error!r}")
            finally:
                with self._lock:
                    self.active -= 1
            self.call_from_thread(done, result)

        threading.Thread(target=run, name="nixforge-blob-copy", daemon=True).start()
        return True
