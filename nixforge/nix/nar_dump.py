"""Stream a store path's NAR out of Nix, xz-compress and hash it in worker threads, into a blob writer.

`nix store dump-path` runs through spawnProcess; its stdout arrives as events on the reactor and is
handed in batches to a worker thread that hashes the NAR, compresses it and writes the result to an
IBlobWriter. Memory stays constant: when more than `high_water` bytes wait for the thread, the
process's stdout is paused (the pipe fills, Nix blocks) until the thread catches up. Cancelling the
returned Deferred (a client that went away) kills Nix and discards the half-written blob.
"""

from __future__ import annotations

import collections
import hashlib
import lzma
import os
from collections.abc import Callable
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixforge.nix.client import NixClient, NixError, NixTimeout
from nixforge.nix.commands import dump_path_argv
from nixforge.nix.process import LineSplitter

log = Logger()
HIGH_WATER = 4 << 20
# xz preset 1: Nix reads any preset. Measured here on a loaded 2-CPU machine: text 15 MB/s at
# preset 1 against 1.2 at 6 (and a smaller file); random data ~1.4 against 1.1 MB/s.
XZ_PRESET = 1
TAIL_LINES = 20


class IBlobWriter(Protocol):
    """What a dump writes into: the shape of nixforge.store.interfaces.IBlobWriter (nix/ imports no store/)."""

    def write(self, data: bytes) -> None: ...

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]: ...

    def abort(self) -> None: ...


@frozen
class NarFile:
    """A stored compressed NAR: its blob digest and size, and the hash and size of the NAR itself."""

    digest: str
    size: int
    nar_sha256: bytes
    nar_size: int


class NarHashMismatch(NixError):
    """The NAR Nix wrote does not hash to the narHash Nix reported for the path."""


class _Compressor:
    """Worker-thread side: hash the NAR, compress it, write it; one batch at a time."""

    def __init__(self, writer: IBlobWriter, preset: int) -> None:
        self.writer = writer
        self.nar = hashlib.sha256()
        self.nar_size = 0
        self.xz = lzma.LZMACompressor(lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)

    def feed(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.nar.update(chunk)
            self.nar_size += len(chunk)
            compressed = self.xz.compress(chunk)
            if compressed:
                self.writer.write(compressed)

    def finish(self, expected: bytes | None) -> NarFile:
        nar_sha256 = self.nar.digest()
        if expected is not None and nar_sha256 != expected:
            self.writer.abort()
            raise NarHashMismatch("the NAR Nix dumped does not match the path's narHash")
        self.writer.write(self.xz.flush())
        digest, size = self.writer.commit()
        return NarFile(digest, size, nar_sha256, self.nar_size)


class _DumpProtocol(ProcessProtocol):
    """Reactor side: queue stdout for the thread (pausing Nix above the high-water mark)."""

    def __init__(self, dump: NarDump) -> None:
        self.dump = dump

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.dump.received(data)
        elif childFD == 2:
            self.dump.stderr.feed(data)

    def processEnded(self, reason: Failure) -> None:
        self.dump.stderr.flush()
        self.dump.process_ended(reason)


class NarDump:
    """One running dump; `result` fires with the NarFile, or fails (NixError, cancelled)."""

    def __init__(self, path: str, writer: IBlobWriter, run_in_thread: Callable[..., Deferred[Any]],
                 expected: bytes | None, preset: int = XZ_PRESET, high_water: int = HIGH_WATER) -> None:
        self.path = path
        self._compressor = _Compressor(writer, preset)
        self._run_in_thread = run_in_thread
        self._expected = expected
        self._high_water = high_water
        self._queue: list[bytes] = []
        self._waiting = 0  # bytes queued or being compressed
        self._busy = False
        self._paused = False
        self._ended: Failure | None = None
        self._done = False
        self.transport: Any = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.stderr = LineSplitter(self.tail.append)
        self.result: Deferred[NarFile] = Deferred(canceller=lambda _: self._cancel())
        self.exited: Deferred[Exception] = Deferred()  # fires with how Nix ended (ProcessDone, ...)
        self.pauses = 0
        self.discarded: Deferred[None] = Deferred()  # fires once a failed or cancelled blob is discarded

    def received(self, data: bytes) -> None:
        """Nix wrote NAR bytes: queue them, pause Nix when too much waits."""
        if self._done:
            return
        self._queue.append(data)
        self._waiting += len(data)
        if self._waiting >= self._high_water and not self._paused and self.transport is not None:
            self._paused = True
            self.pauses += 1
            self.transport.pauseProducing()
        self._pump()

    def process_ended(self, reason: Failure) -> None:
        """Nix exited: finish once the thread has written everything."""
        self._ended = reason
        self.exited.callback(reason.value)
        self._pump()

    def _pump(self) -> None:
        if self._busy or self._done:
            return
        if self._queue:
            batch, self._queue = self._queue, []
            self._busy = True
            self._run_in_thread(self._compressor.feed, batch).addCallbacks(
                lambda _: self._fed(sum(map(len, batch))), self._fail)
        elif self._ended is not None:
            self._finish(self._ended)

    def _fed(self, size: int) -> None:
        self._busy = False
        self._waiting -= size
        if self._paused and self._waiting < self._high_water // 2 and not self._done:
            self._paused = False
            self.transport.resumeProducing()
        if self._done:
            self._discard()
        else:
            self._pump()

    def _finish(self, reason: Failure) -> None:
        self._done = True
        if not isinstance(reason.value, ProcessDone):
            self._discard()
            self._fire(Failure(NixError(f"nix store dump-path {self.path} failed: {reason.getErrorMessage()}",
                                        getattr(reason.value, "exitCode", None), list(self.tail))))
            return
        self._busy = True
        self._run_in_thread(self._compressor.finish, self._expected).addCallbacks(self._fire, self._fire)

    def _fail(self, failure: Failure) -> None:
        self._busy = False
        if self._done:
            return
        self._done = True
        self._kill()
        self._discard()
        self._fire(failure)

    def _fire(self, outcome: NarFile | Failure) -> None:
        if not self.result.called:  # a cancelled dump's result has fired already
            self.result.callback(outcome) if not isinstance(outcome, Failure) else self.result.errback(outcome)

    def _cancel(self) -> None:
        log.info("NAR dump of {path} cancelled: its client went away", path=self.path)
        self._done = True
        self._kill()
        if not self._busy:
            self._discard()

    def time_out(self, seconds: float) -> None:
        """The dump ran `seconds` without ending: kill Nix, discard the blob, fail with NixTimeout."""
        if self._done:
            return
        self._done = True
        self._kill()
        if not self._busy:
            self._discard()
        self._fire(Failure(NixTimeout(f"nix store dump-path {self.path} killed after {seconds:g} s", seconds,
                                      log_tail=list(self.tail))))

    def _kill(self) -> None:
        if self._ended is None and self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except Exception:  # already gone
                pass

    def _discard(self) -> None:
        if not self.discarded.called:
            self._run_in_thread(self._compressor.writer.abort).addBoth(
                lambda _: self.discarded.called or self.discarded.callback(None))


def dump_nar(reactor: Any, nix: NixClient, path: str, writer: IBlobWriter,
             run_in_thread: Callable[..., Deferred[Any]], expected: bytes | None = None,
             preset: int = XZ_PRESET) -> Deferred[NarFile]:
    """Dump `path` into `writer`; the Deferred fires with the stored NarFile (cancel it to stop Nix).

    Nix gets the client's timeout (NixTimeout after it).

    `expected` is the NAR's SHA-256 as Nix registered it: a NAR that differs is not stored.
    """
    dump = start_dump(reactor, nix, path, writer, run_in_thread, expected, preset)
    timer = reactor.callLater(nix.timeout, dump.time_out, nix.timeout)
    dump.result.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
    return dump.result


def start_dump(reactor: Any, nix: NixClient, path: str, writer: IBlobWriter,
               run_in_thread: Callable[..., Deferred[Any]], expected: bytes | None = None,
               preset: int = XZ_PRESET, high_water: int = HIGH_WATER) -> NarDump:
    """Start dumping `path` into `writer`; return the running NarDump (its `result`, `exited`)."""
    dump = NarDump(path, writer, run_in_thread, expected, preset, high_water)
    argv = dump_path_argv(nix.nix_binary, path, nix.settings)
    try:
        dump.transport = reactor.spawnProcess(_DumpProtocol(dump), argv[0], argv, env={**os.environ, **nix.env})
    except OSError as error:
        writer.abort()
        dump.result.errback(NixError(f"cannot start {argv[0]}: {error}"))
    return dump
