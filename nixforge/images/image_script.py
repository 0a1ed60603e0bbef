"""Run a flake's image script (nixpkgs streamLayeredImage) and ingest the archive it streams.

The script runs in a worker thread's subprocess: argv only, its own session (so the whole group
can be killed), stdout piped straight into the docker-archive reader. A watchdog kills it at the
build deadline, and `kill_all` kills every running script when the registry stops. It runs as the
ScriptUser given (see nixforge.images.script_user), in `/`, with the minimal SCRIPT_ENVIRONMENT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading

from twisted.logger import Logger

from nixforge.errors import BuildFailed, BuildTimedOut
from nixforge.images.script_user import SCRIPT_ENVIRONMENT, ScriptUser
from nixforge.oci.docker_archive import ingest_stream
from nixforge.oci.documents import ImageManifests
from nixforge.store.interfaces import IBlobStore

log = Logger()


class ScriptRunner:
    """Runs image scripts, each killable by deadline or by `kill_all`. Thread-safe.

    `user`: who the scripts run as; None runs them as this process's own user.
    """

    def __init__(self, user: ScriptUser | None = None) -> None:
        self.user = user
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopped = False

    @staticmethod
    def is_script(path: str) -> bool:
        """Tell whether a build output is an executable script rather than an image file."""
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            return False
        with open(path, "rb") as stream:
            return stream.read(2) == b"#!"

    def ingest_output(
        self, store: IBlobStore, path: str, labels: dict[str, str], seconds: float
    ) -> ImageManifests:
        """Run `path`, ingest its stdout; kill it after `seconds` (BuildTimedOut). Blocking."""
        if seconds <= 0:
            raise BuildTimedOut("build timed out before the image script ran", {"script": path})
        identity = self.user.popen_arguments() if self.user is not None else {}
        # Started and registered under the lock, so `kill_all` can never miss a script just started.
        with self._lock:
            if self._stopped:
                raise BuildFailed("the registry is stopping", {"script": path})
            process = subprocess.Popen(
                [path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True,
                cwd="/", env=dict(SCRIPT_ENVIRONMENT), **identity,
            )
            self._running.add(process)
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            _kill_group(process)

        watchdog = threading.Timer(seconds, expire)
        watchdog.daemon = True
        watchdog.start()
        log.debug("ingesting the archive streamed by {path}", path=path)
        try:
            assert process.stdout is not None
            try:
                manifests = ingest_stream(store, process.stdout, labels)
                while process.stdout.read(1 << 20):  # tar padding after the end-of-archive blocks
                    pass
            except BuildFailed:
                if timed_out.is_set():
                    raise BuildTimedOut("the image script timed out", {"script": path}) from None
                raise
            finally:
                process.stdout.close()
            status = process.wait()
        finally:
            watchdog.cancel()
            _kill_group(process)
            process.wait()
            with self._lock:
                self._running.discard(process)
        if timed_out.is_set():
            raise BuildTimedOut("the image script timed out", {"script": path})
        if status != 0:
            raise BuildFailed("the image script failed", {"script": path, "status": status})
        return manifests

    def kill_all(self) -> None:
        """Kill every running script's process group (their ingestion then fails at once); start no more."""
        with self._lock:
            self._stopped = True
            running = list(self._running)
        for process in running:
            _kill_group(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the script's session (it is the group leader); a finished group is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
