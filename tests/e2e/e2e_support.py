"""Helpers for end-to-end tests: a real `twistd -n nixforge` subprocess, HTTP and OCI client calls."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from attrs import Factory, define, field, frozen

FIXTURE_FLAKES = Path(__file__).resolve().parent.parent / "fixtures" / "flakes"
SHARED_LIB_NIX = Path(__file__).resolve().parents[2] / "examples" / "demo-flake" / "lib.nix"
# Offline (no binary cache) and with no experimental feature on, as Debian's stock nix.conf has it:
# nixforge must turn on nix-command and flakes itself. The tests' own nix calls use `nix_command`.
OFFLINE_NIX_CONFIG = "substituters =\nexperimental-features ="
BUSYBOX = Path("/bin/busybox")
LISTENING = re.compile(r"nixforge listening on (?P<host>\S+):(?P<port>\d+)")
BUILD_STARTED = re.compile(r"build started")
# NixClient logs every command it starts at DEBUG.
NIX_RUN = re.compile(r"running \S*nix (?:build|eval|flake|path-info) ")
# twistd (Twisted >= 22) ends a clean SIGTERM shutdown by re-raising the signal: status -15 or 0.
CLEAN_EXIT = (0, -signal.SIGTERM)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"
DOCKER_ACCEPT = f"{DOCKER_MANIFEST}, {DOCKER_LIST}"

# Environment variables nixforge reads; the tests pass every setting as an option instead.
FORGE_ENV_VARS = (
    "LOG_LEVEL", "FLASK_HOST", "FLASK_PORT", "GITHUB_REPO", "NIX_BUILD_TIMEOUT", "CACHE_SIZE",
    "MAX_IMAGE_NAME_LENGTH", "MAX_TAG_LENGTH", "NIXFORGE_DATA_DIR",
)


def require_tool(name: str) -> str:
    """Return the path of a command the e2e tests need, or fail the test saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"end-to-end tests need `{name}` on PATH; install it with scripts/setup.sh "
            f"(apt-get install nix-bin skopeo podman runc umoci busybox-static containerd apache2-utils openssl wrk)",
            pytrace=False,
        )
    return path


def twistd_path() -> Path:
    """The `twistd` of the Python running the tests (the venv nixforge is installed in)."""
    path = Path(sys.executable).parent / "twistd"
    if not path.exists():
        pytest.fail(f"no twistd next to {sys.executable}; install nixforge into this venv", pytrace=False)
    return path


def nix_command(*args: str) -> list[str]:
    """argv of a nix command the tests run themselves, with the features turned on in the argv."""
    return ["nix", "--extra-experimental-features", "nix-command flakes", *args]


def nix_env() -> dict[str, str]:
    """The environment for Nix (and nixforge): the tests' own, offline, no experimental feature on."""
    env = {k: v for k, v in os.environ.items() if k not in FORGE_ENV_VARS and not k.startswith("NIXFORGE_")}
    env["NIX_CONFIG"] = OFFLINE_NIX_CONFIG
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_tool(argv: Sequence[str], timeout: float = 300, check: bool = True,
             cache_home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (argv list), capture its output; fail with its stderr when it exits non-zero.

    `cache_home`: a fresh `XDG_CACHE_HOME` for Nix. Nix remembers a binary cache's `nix-cache-info`
    and narinfos by URL for days; a test's loopback port may be one an earlier test or run used, so a
    command reading a binary cache over HTTP must not see what Nix remembered of that URL.
    """
    env = nix_env()
    if cache_home is not None:
        env["XDG_CACHE_HOME"] = str(cache_home)
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{argv!r} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
            f"stderr:\n{result.stderr[-4000:]}"
        )
    return result


def prepare_flake(source: Path, target: Path, nonce: str) -> Path:
    """Copy a flake, the shared `lib.nix` and the static busybox into `target`, with a `nonce` file.

    The fixture flake and the demo flake share one `lib.nix`, kept in examples/demo-flake.
    """
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("busybox", "nonce", ".gitignore"))
    shutil.copy2(SHARED_LIB_NIX, target / "lib.nix")
    shutil.copy2(BUSYBOX, target / "busybox")
    (target / "nonce").write_text(nonce)
    return target


def nix_out_path(flake_ref: str, attr: str) -> Path:
    """Build `<flake_ref>#<attr>` with Nix and return its output path (Nix 2.8 `--json`)."""
    result = run_tool(nix_command("build", "--json", "--no-link", f"{flake_ref}#{attr}"), timeout=600)
    return Path(json.loads(result.stdout)[0]["outputs"]["out"])


def nix_closure(path: Path) -> list[Path]:
    """The runtime closure of a store path, as `nix path-info -r` lists it."""
    result = run_tool(nix_command("path-info", "-r", str(path)))
    return sorted(Path(line) for line in result.stdout.split())


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        pause.wait(interval)
    return True


def processes_matching(marker: str) -> list[tuple[int, str]]:
    """Processes (pid, command line) whose argv contains `marker`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in argv:
            found.append((int(entry.name), argv.strip()))
    return found


def vm_rss(pid: int) -> int:
    """The resident set size of a process in bytes, from `VmRSS` in /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@frozen
class HttpResponse:
    """Status, lower-cased headers and body of one HTTP exchange."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        """The `code` of every OCI error in the body."""
        return [error["code"] for error in self.json()["errors"]]


def http_request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 300,
    data: bytes | None = None,
) -> HttpResponse:
    """One HTTP request with urllib (`data` as its body); error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResponse(
                response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
            )
    except urllib.error.HTTPError as error:
        return HttpResponse(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def terminate(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a child process, wait for it, then SIGKILL it if it is still there."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@define(eq=False)
class ForgeProcess:
    """A real `twistd -n nixforge` on 127.0.0.1 port 0, with its log captured line by line."""

    flake_ref: str
    data_dir: Path
    work_dir: Path
    log_level: str = "DEBUG"
    build_timeout: int = 300
    extra_args: list[str] = Factory(list)
    # Variables added to twistd's environment (after nix_env() dropped the NIXFORGE_ ones).
    extra_env: dict[str, str] = Factory(dict)
    # With a tac file, start `twistd -n -y <tac>` configured by environment variables only.
    tac: Path | None = None
    port: int | None = None
    lines: list[str] = Factory(list)
    _process: subprocess.Popen[bytes] | None = None
    _reader: threading.Thread | None = None
    _changed: threading.Condition = Factory(threading.Condition)
    _eof: bool = False
    _log_file: IO[str] | None = field(default=None, repr=False)

    def argv(self) -> list[str]:
        """The command line that starts this registry."""
        prefix = [str(twistd_path()), "-n", f"--pidfile={self.work_dir / 'twistd.pid'}"]
        if self.tac is not None:
            return [*prefix, "-y", str(self.tac)]
        return [
            *prefix, "nixforge",
            "--port", "tcp:0:interface=127.0.0.1",
            "--flake", self.flake_ref,
            "--data-dir", str(self.data_dir),
            "--log-level", self.log_level,
            "--build-timeout", str(self.build_timeout),
            "--nix-option", "connect-timeout=5",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        """The environment of twistd: Nix offline, and the settings too when started from the tac."""
        env = nix_env()
        if self.tac is not None:
            env.update({
                "FLASK_HOST": "127.0.0.1", "FLASK_PORT": "0", "GITHUB_REPO": self.flake_ref,
                "NIXFORGE_DATA_DIR": str(self.data_dir), "LOG_LEVEL": self.log_level,
                "NIX_BUILD_TIMEOUT": str(self.build_timeout),
            })
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30) -> ForgeProcess:
        """Start twistd and wait for `nixforge listening on <host>:<port>`; remember the port."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.lines.clear()
        self._eof = False
        self._log_file = open(self.work_dir / "twistd.log", "a", encoding="utf-8")  # noqa: SIM115
        self._log_file.write(f"=== {' '.join(self.argv())}\n")
        self._process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=self.work_dir, env=self.environment(), start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,), daemon=True)
        self._reader.start()
        match = self.wait_for(LISTENING, timeout, what="the `nixforge listening on` line")
        self.port = int(match.group("port"))
        return self

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._changed:
                self.lines.append(line)
                if self._log_file is not None:
                    self._log_file.write(line + "\n")
                    self._log_file.flush()
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float, what: str = "") -> re.Match[str]:
        """Wait until a log line matches `pattern`; fail with the log's tail if it never does."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = pattern.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    state = "exited" if self._eof else f"still running after {timeout} s"
                    raise AssertionError(
                        f"nixforge {state} without logging {what or pattern.pattern}\n"
                        f"argv: {self.argv()}\nlog tail:\n" + "\n".join(self.lines[-40:])
                    )
                self._changed.wait(remaining)

    def sync_log(self, timeout: float = 30) -> None:
        """Wait until every line the registry logged so far has been read (the log is a pipe that
        a thread reads: a line logged during the last request may not be in `lines` yet)."""
        token = secrets.token_hex(8)
        self.get(f"/v2/?sync={token}")
        self.wait_for(re.compile(re.escape(token)), timeout, what=f"the access log line of sync {token}")

    def matching_lines(self, pattern: re.Pattern[str]) -> list[str]:
        """The log lines so far that match `pattern`."""
        with self._changed:
            return [line for line in self.lines if pattern.search(line)]

    def log_text(self) -> str:
        """The whole log so far."""
        with self._changed:
            return "\n".join(self.lines)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, wait, then SIGKILL if needed; return the exit status (None if never started)."""
        process = self._process
        if process is None:
            return None
        terminate(process, timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._process = None
        return process.returncode

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30) -> float:
        """Send `sig` to twistd's whole process group (twistd and its Nix children), as a crash or an
        OOM kill would; wait for twistd to end and return how many seconds that took."""
        process = self._process
        assert process is not None, "nixforge is not running"
        started = time.monotonic()
        if sig == signal.SIGKILL:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        process.wait(timeout)
        took = time.monotonic() - started
        self.stop(timeout)
        return took

    def restart(self, flake_ref: str | None = None) -> ForgeProcess:
        """Stop and start again on the same data dir, optionally with another flake ref."""
        self.stop()
        if flake_ref is not None:
            self.flake_ref = flake_ref
        return self.start()

    @property
    def pid(self) -> int:
        """The process id of the running twistd."""
        assert self._process is not None, "nixforge is not running"
        return self._process.pid

    def rss(self) -> int:
        """The resident set size of twistd, in bytes (`VmRSS` of /proc/<pid>/status)."""
        return vm_rss(self.pid)

    @property
    def registry(self) -> str:
        """`127.0.0.1:<port>`, as image references need it."""
        assert self.port is not None, "nixforge is not running"
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """An http URL on this registry."""
        return f"http://{self.registry}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            data: bytes | None = None) -> HttpResponse:
        """A request to this registry."""
        return http_request(self.url(path), method=method, headers=headers, data=data)

    def manifest(self, name: str, reference: str = "latest", accept: str = OCI_ACCEPT) -> HttpResponse:
        """GET a manifest; fail unless it is served (200)."""
        response = self.get(f"/v2/{name}/manifests/{reference}", {"Accept": accept})
        assert response.status == 200, (response.status, response.body[:2000], self.log_tail())
        return response

    def blob(self, name: str, digest: str) -> bytes:
        """GET a whole blob; fail unless it is served and matches its digest."""
        response = self.get(f"/v2/{name}/blobs/{digest}")
        assert response.status == 200, (response.status, response.body[:2000])
        assert sha256_digest(response.body) == digest
        return response.body

    def log_tail(self, count: int = 30) -> str:
        """The last lines of the log, for assertion messages."""
        with self._changed:
            return "\n".join(self.lines[-count:])


ForgeFactory = Callable[..., ForgeProcess]
REVISION_LABEL = "org.opencontainers.image.revision"


def revision_of(forge: ForgeProcess, name: str, tag: str) -> str:
    """The revision name:tag was built from (fails unless it is served).

    A flake's own image carries it as a manifest annotation, a closure image as a config label.
    """
    manifest = forge.manifest(name, tag).json()
    if REVISION_LABEL in manifest.get("annotations", {}):
        return manifest["annotations"][REVISION_LABEL]
    config = json.loads(forge.blob(name, manifest["config"]["digest"]))
    return config["config"]["Labels"][REVISION_LABEL]


class GitFlake:
    """A git repository holding the fixture flake, committed with real `git` (argv lists)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.revisions: dict[str, str] = {}

    def git(self, *args: str) -> str:
        """Run one git command in the repository; return its stdout."""
        argv = ["git", "-C", str(self.path), "-c", "user.name=nixforge", "-c", "user.email=t@nixforge",
                "-c", "commit.gpgsign=false", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    def commit(self, label: str, file: str = "note", text: str | None = None) -> str:
        """Change a tracked file (`note`, or `file` to `text`), commit everything, remember the revision."""
        (self.path / file).write_text(label + "\n" if text is None else text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", label)
        self.revisions[label] = self.git("rev-parse", "HEAD")
        return self.revisions[label]

    @property
    def ref(self) -> str:
        """The flake reference nixforge serves: the repository's checked-out branch."""
        return f"git+file://{self.path}"

    @classmethod
    def create(cls, source: Path, target: Path, nonce: str) -> GitFlake:
        """A fresh repository (branch `main`, nothing committed yet) holding a copy of the flake `source`."""
        repo = cls(prepare_flake(source, target, nonce))
        repo.git("init", "-q", "-b", "main")
        return repo


@define(eq=False)
class Podman:
    """podman with its own storage under a temporary directory, cleaned up afterwards."""

    root: Path
    # podman refuses a runroot longer than 50 characters: a short directory of its own under /tmp.
    runroot: Path = Factory(lambda: Path(tempfile.mkdtemp(prefix="nf-podman-", dir="/tmp")))

    def base(self) -> list[str]:
        """podman's argv prefix with the private storage."""
        return [
            require_tool("podman"), "--root", str(self.root / "storage"), "--runroot", str(self.runroot),
            "--storage-driver", "overlay",
        ]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one podman command; fail on a non-zero exit."""
        return run_tool([*self.base(), *args], timeout=timeout)

    def run_image(self, image: str) -> str:
        """`podman run` an image the way it works on these machines; return its stdout."""
        return self(
            "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024",
            "--ulimit", "nproc=1024:1024", "--network", "none", image,
        ).stdout

    def cleanup(self, helpers_before: set[int]) -> None:
        """Remove containers and images, and end aardvark-dns processes that appeared meanwhile."""
        run_tool([*self.base(), "rm", "--all", "--force"], check=False)
        run_tool([*self.base(), "rmi", "--all", "--force"], check=False)
        for pid, _ in processes_matching("aardvark-dns"):
            if pid not in helpers_before:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.runroot, ignore_errors=True)


def aardvark_pids() -> set[int]:
    """PIDs of running aardvark-dns processes."""
    return {pid for pid, _ in processes_matching("aardvark-dns")}


def walk_tree(root: Path) -> Iterator[Path]:
    """Every path under `root` (itself included), without following symlinks."""
    yield root
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in sorted(dirnames + filenames):
                yield Path(dirpath) / name
