"""containerd (the client Kubernetes pulls through) against a real `twistd -n nixforge`: pull, verify, run."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from attrs import define, field
from e2e_support import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ForgeProcess,
    processes_matching,
    run_tool,
    sha256_digest,
    terminate,
    wait_until,
)

# The Accept header containerd 1.6 sends when it resolves a tag (seen on the wire with `ctr images pull`).
CONTAINERD_ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"))
# nixforge's access log line of a request made by containerd's resolver/fetcher.
CONTAINERD_REQUEST = re.compile(
    r'access_log#info\] (?P<method>HEAD|GET) (?P<path>/v2/\S+) (?P<status>\d{3}) .*"containerd/'
)
CONTAINERD_SETUP = "apt-get install containerd (scripts/setup.sh)"
NAMESPACE = "nixforge-e2e"
# containerd 1.6 puts shim sockets in <DefaultStateDir>/s whatever --state says (pkg/shim/util_unix.go).
SHIM_SOCKET_DIRS = (Path("/run/containerd/s"), Path("/run/containerd"))


def require_containerd() -> tuple[str, str]:
    """The paths of `containerd` and `ctr`, or fail (never skip) saying how to install them."""
    found = {name: shutil.which(name) for name in ("containerd", "ctr", "containerd-shim-runc-v2", "runc")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"containerd e2e tests need {', '.join(missing)} on PATH: {CONTAINERD_SETUP}", pytrace=False)
    return str(found["containerd"]), str(found["ctr"])


@define(eq=False)
class Containerd:
    """A private containerd daemon: its own root, state, sockets and config under one short /tmp dir."""

    log_path: Path
    # Unix socket paths must stay under ~100 characters: a short directory of its own under /tmp.
    base: Path = field(factory=lambda: Path(tempfile.mkdtemp(prefix="nf-ctd-", dir="/tmp")))
    _process: subprocess.Popen[bytes] | None = None
    _created_run_dir: bool = False
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        """The daemon's gRPC socket (the ttrpc one is next to it)."""
        return self.base / "c.sock"

    def config(self) -> str:
        """A minimal config: no CRI plugin, nothing under /opt, /run/containerd or /var/lib/containerd."""
        return "\n".join((
            "version = 2",
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[ttrpc]",
            f'  address = "{self.socket}.ttrpc"',
            "[debug]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{self.base / "opt"}"',
            "",
        ))

    def argv(self) -> list[str]:
        """The command line of the daemon."""
        containerd, _ = require_containerd()
        return [
            containerd, "--config", str(self.base / "config.toml"), "--root", str(self.base / "root"),
            "--state", str(self.base / "state"), "--address", str(self.socket), "--log-level", "info",
        ]

    def start(self, timeout: float = 30) -> Containerd:
        """Start the daemon and wait (bounded) until `ctr version` answers on its socket."""
        (self.base / "config.toml").write_text(self.config())
        self._created_run_dir = not SHIM_SOCKET_DIRS[-1].exists()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115
        self._process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def answers() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                return True
            return self.ctr("version", timeout=10, check=False).returncode == 0

        answered = wait_until(answers, timeout, interval=0.2)
        if not answered or self._process.poll() is not None:
            state = f"exited {self._process.returncode}" if self._process.poll() is not None else "never answered"
            log = self.log_path.read_text(errors="replace")[-4000:]
            self.stop()
            pytest.fail(f"private containerd {state} within {timeout} s: {self.argv()}\n{log}", pytrace=False)
        return self

    def ctr(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ctr --address <socket> --namespace nixforge-e2e <args>`; fail on a non-zero exit if `check`."""
        _, ctr = require_containerd()
        return run_tool([ctr, "--address", str(self.socket), "--namespace", NAMESPACE, *args],
                        timeout=timeout, check=check)

    def pull(self, reference: str) -> None:
        """`ctr images pull --plain-http` (containerd verifies every digest and size, then unpacks)."""
        self.ctr("images", "pull", "--plain-http", reference, timeout=600)

    def image_check(self, reference: str) -> dict[str, str]:
        """The `ctr images check` row of an image: ref, type, digest, status, size, unpacked."""
        result = self.ctr("images", "check", f"name=={reference}")
        rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
        matching = [row for row in rows if row[0] == reference]
        assert len(matching) == 1, result.stdout
        row = matching[0]
        # STATUS is e.g. `complete (3/3)` and SIZE e.g. `1.2 MiB/1.2 MiB`: split by the known columns.
        return {"ref": row[0], "type": row[1], "digest": row[2], "status": " ".join(row[3:5]),
                "unpacked": row[-1]}

    def remove_containers(self) -> None:
        """Kill and delete every task and container the tests left behind."""
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
            self.ctr("tasks", "delete", "--force", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)

    def leftovers(self) -> list[tuple[int, str]]:
        """Processes whose command line names this daemon's directory (the daemon, its shims)."""
        return processes_matching(str(self.base))

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the daemon, then SIGKILL; kill its shims; unmount and remove its directory."""
        process = self._process
        if process is not None and process.poll() is None:
            self.remove_containers()
            terminate(process, timeout)
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for pid, _ in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.leftovers(), timeout)
        for mount_point in reversed(self.mount_points()):
            subprocess.run(["umount", "--lazy", mount_point], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        if self._created_run_dir:
            # The shims' sockets are gone with them; remove the directories only if empty (rmdir).
            for directory in SHIM_SOCKET_DIRS:
                try:
                    directory.rmdir()
                except OSError:
                    pass

    def mount_points(self) -> list[str]:
        """Mount points under this daemon's directory (snapshots, rootfs), in mount order."""
        prefix = f"{self.base}/"
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
            points = [line.split()[4] for line in mountinfo]
        return [point for point in points if point.startswith(prefix)]


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A private containerd for the module; afterwards none of its processes or mounts remain."""
    require_containerd()
    daemon = Containerd(log_path=tmp_path_factory.mktemp("containerd") / "containerd.log").start()
    yield daemon
    daemon.stop()
    assert daemon.leftovers() == [], f"containerd processes survived teardown: {daemon.leftovers()}"
    assert daemon.mount_points() == [], f"mounts survived teardown: {daemon.mount_points()}"
    assert not daemon.base.exists()


def containerd_requests(forge: ForgeProcess, since: int) -> list[tuple[str, str, int]]:
    """(method, path, status) of the requests containerd made, from log line `since` on."""
    found = []
    for line in forge.lines[since:]:
        match = CONTAINERD_REQUEST.search(line)
        if match:
            found.append((match.group("method"), match.group("path"), int(match.group("status"))))
    return found


def assert_pulled_as_served(containerd: Containerd, forge: ForgeProcess, name: str) -> str:
    """Pull `<name>:latest` with containerd; check it matches what nixforge serves; return its digest."""
    reference = f"{forge.registry}/{name}:latest"
    since = len(forge.lines)
    containerd.pull(reference)
    served = forge.manifest(name, accept=CONTAINERD_ACCEPT)
    digest = served.headers["docker-content-digest"]
    assert digest == sha256_digest(served.body)
    row = containerd.image_check(reference)
    assert row["digest"] == digest, (row, served.headers)
    assert row["type"] == served.headers["content-type"]
    manifest = served.json()
    layers = len(manifest["layers"])
    # The config and every layer are in containerd's content store; the layers are unpacked
    # (unpacking checks each layer's uncompressed digest against the config's rootfs.diff_ids).
    assert row["status"] == f"complete ({layers + 1}/{layers + 1})", row
    assert row["unpacked"] == "true", row
    blobs = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}

    def fetched_blobs() -> set[str]:
        requests = containerd_requests(forge, since)
        return {path.rsplit("/", 1)[1] for method, path, _ in requests if method == "GET" and "/blobs/" in path}

    # twistd logs a request when it ends, read from its stdout by a thread: wait for the last lines.
    wait_until(lambda: fetched_blobs() >= blobs, 10)
    requests = containerd_requests(forge, since)
    assert requests, forge.log_tail()
    assert requests[0] == ("HEAD", f"/v2/{name}/manifests/latest", 200), (requests, forge.log_tail())
    assert ("GET", f"/v2/{name}/manifests/{digest}", 200) in requests, requests
    assert all(status == 200 for _, _, status in requests), requests
    assert not any(method == "GET" and path.endswith("/manifests/latest") for method, path, _ in requests)
    assert fetched_blobs() == blobs, requests
    return digest


def test_containerd_pulls_hello_by_tag(containerd: Containerd, shared_forge: ForgeProcess) -> None:
    """`ctr images pull` of hello:latest: HEAD by tag, GET by digest, and the digest nixforge serves."""
    assert_pulled_as_served(containerd, shared_forge, "hello")


def test_containerd_pulls_closure_assembled_tool_a(containerd: Containerd, shared_forge: ForgeProcess) -> None:
    """The same for tool-a, an image assembled from the package's closure (several layers)."""
    assert_pulled_as_served(containerd, shared_forge, "tool-a")
    manifest = shared_forge.manifest("tool-a", accept=CONTAINERD_ACCEPT).json()
    assert len(manifest["layers"]) > 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [("hello", ["Hello from nixforge"]), ("tool-a", ["tool-a: hello from nixforge", "libshared v1"])],
)
def test_containerd_runs_pulled_image(
    containerd: Containerd, shared_forge: ForgeProcess, name: str, expected: list[str]
) -> None:
    """`ctr run --rm` of the pulled image runs its entrypoint from the unpacked layers."""
    reference = f"{shared_forge.registry}/{name}:latest"
    containerd.pull(reference)
    container = f"nf-{name}-{secrets.token_hex(4)}"
    result = containerd.ctr(
        "run", "--rm", "--fifo-dir", str(containerd.base / "fifo"), "--runc-root", str(containerd.base / "runc"),
        reference, container, timeout=120,
    )
    assert result.stdout.splitlines() == expected, result
    assert container not in containerd.ctr("containers", "ls", "-q").stdout.split()
