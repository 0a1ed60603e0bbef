"""Start and stop the benchmark's servers (the CNCF distribution peer, or any registry process) on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from attrs import define, frozen

PEER_BINARY = "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the peer cannot report port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@define(eq=False)
class ServerProcess:
    """A server started by the benchmark: its process, its loopback port and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        """The server's process id (the one whose memory is measured)."""
        return self.process.pid

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`, as skopeo's docker:// references want it."""
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 10.0) -> int | None:
        """TERM the process, KILL it after `grace` seconds; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(grace)
        return self.process.returncode

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    argv: Sequence[str], log_path: Path, cwd: Path, env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout and stderr going to `log_path` (a file: a full pipe would stall the server)."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=cwd, env=dict(env) if env is not None else None, start_new_session=True,
        )


def wait_until(check: Callable[[], bool], process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    """Poll `check` until it holds; fail if `process` exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.05)


def api_answers(base_url: str) -> bool:
    """True once `GET /v2/` answers 200 (an OCI registry is up)."""
    try:
        with urllib.request.urlopen(f"{base_url}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def peer_config(root: Path, port: int, storage: Sequence[str] | None = None) -> str:
    """The peer's config.yml: filesystem storage (or the `storage` lines given), in-memory blob descriptor
    cache, loopback only.

    Logging stays at distribution's defaults (info, access log on), as nixforge's stays at its own.
    """
    return "\n".join([
        "version: 0.1",
        "log:",
        "  level: info",
        "storage:",
        "  cache:",
        "    blobdescriptor: inmemory",
        *(storage if storage is not None else ["  filesystem:", f"    rootdirectory: {root}"]),
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "",
    ])


def s3_storage(endpoint: str, bucket: str, access_key: str, secret_key: str, region: str) -> list[str]:
    """distribution 2.8's `s3` driver on an S3-compatible endpoint over plain HTTP (path style, as 2.8 always
    uses with a `regionendpoint`); blob GETs are redirected to presigned URLs, the driver's default."""
    return [
        "  s3:",
        f"    regionendpoint: {endpoint}",
        f"    region: {region}",
        f"    bucket: {bucket}",
        f"    accesskey: {access_key}",
        f"    secretkey: {secret_key}",
        "    secure: false",
        "    v4auth: true",
        "    rootdirectory: /distribution",
        "  redirect:",
        "    disable: false",
    ]


def start_peer(workdir: Path, binary: str = PEER_BINARY, timeout: float = 30.0,
               storage: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerProcess:
    """Start CNCF distribution (`docker-registry serve config.yml`) in `workdir`; return once /v2/ answers.

    `storage`: the config's storage lines (default: the filesystem under `workdir`); `env`: its environment.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    storage_dir = workdir / "storage"
    storage_dir.mkdir(exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(peer_config(storage_dir, port, storage), encoding="utf-8")
    log_path = workdir / "registry.log"
    server = ServerProcess("distribution", spawn([binary, "serve", str(config)], log_path, workdir, env), port,
                           log_path)
    try:
        wait_until(lambda: api_answers(server.base_url), server.process, "distribution", timeout)
    except BaseException:
        server.stop()
        raise
    return server


def skopeo_copy(source: str, destination: str, timeout: float = 600.0) -> None:
    """`skopeo copy` between two references over plain HTTP; raise with skopeo's output on failure."""
    argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", source, destination]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


@frozen
class Descriptor:
    """An OCI content descriptor: media type, digest and size."""

    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, object]:
        """The descriptor as it appears in a manifest."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def _write_blob(layout: Path, data: bytes, media_type: str) -> Descriptor:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return Descriptor(media_type, f"sha256:{digest}", len(data))


def _random_layer(size: int) -> bytes:
    """A gzip-compressed tar holding one file of `size` random bytes (incompressible, like the real one)."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("big")
        info.size, info.mtime, info.mode = size, 1, 0o444
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return gzip.compress(tar_bytes.getvalue(), compresslevel=1, mtime=0)


def make_oci_layout(layout: Path, tag: str, layer_size: int) -> Descriptor:
    """Write an OCI image layout with one random layer of ~`layer_size` bytes; return its manifest descriptor.

    Used to measure the peer alone (`serve_benchmark.py --peer-only`) when nixforge cannot run.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}), encoding="utf-8")
    layer_data = _random_layer(layer_size)
    layer = _write_blob(layout, layer_data, OCI_LAYER_GZIP)
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer_data)).hexdigest()
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh"],
                   "Labels": {"org.opencontainers.image.title": "bench"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "serve_benchmark.py", "comment": "x" * 1500}],
    }
    config_desc = _write_blob(layout, json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc.as_json(),
                "layers": [layer.as_json()]}
    manifest_desc = _write_blob(layout, json.dumps(manifest).encode(), OCI_MANIFEST)
    index = {"schemaVersion": 2, "manifests": [
        {**manifest_desc.as_json(), "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index), encoding="utf-8")
    return manifest_desc
