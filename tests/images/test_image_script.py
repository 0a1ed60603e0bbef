"""Image scripts (streamLayeredImage) run in their own group, stream into ingestion, die on time."""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

import pytest

from nixforge.errors import BuildFailed, BuildTimedOut
from nixforge.images.image_script import ScriptRunner
from nixforge.store.memory import MemoryBlobStore
from tests.oci.archive_builders import docker_archive_members, sample_layers, tar_bytes


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / f"stream-{secrets.token_hex(4)}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_the_streamed_archive_is_ingested(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(tar_bytes(docker_archive_members(sample_layers())))
    path = script(tmp_path, f"exec /bin/cat {archive}\n")
    runner = ScriptRunner()
    assert runner.is_script(str(path)) and not runner.is_script(str(archive))
    store = MemoryBlobStore()
    manifests = runner.ingest_output(store, str(path), {}, 30)
    assert manifests.oci.digest.startswith("sha256:")


def test_a_failing_script_fails_the_build(tmp_path: Path) -> None:
    path = script(tmp_path, "echo not a tar; exit 3\n")
    with pytest.raises(BuildFailed):
        ScriptRunner().ingest_output(MemoryBlobStore(), str(path), {}, 30)


def announcing_script(tmp_path: Path) -> tuple[Path, Path]:
    """A script that writes its pid (= its process group) to a FIFO, then sleeps with a child."""
    fifo = tmp_path / "announce"
    os.mkfifo(fifo)
    return script(tmp_path, f"echo $$ > {fifo}\n/bin/sleep 60 &\nwait\n"), fifo


def group_is_gone(pgid: int) -> bool:
    """No live process is left in the group (a zombie waiting for init to reap it is dead)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            return False
    return True


def group_ends(pgid: int, within: float = 10.0) -> bool:
    """The group's processes all die soon: SIGKILL to a group returns before each member is dead."""
    deadline = time.monotonic() + within
    while not group_is_gone(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_in_background(runner: ScriptRunner, path: Path, seconds: float) -> tuple[threading.Thread, list]:
    outcome: list[BaseException] = []

    def ingest() -> None:
        try:
            runner.ingest_output(MemoryBlobStore(), str(path), {}, seconds)
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=ingest)
    worker.start()
    return worker, outcome


def test_a_slow_script_is_killed_at_the_deadline_with_its_children(tmp_path: Path) -> None:
    path, fifo = announcing_script(tmp_path)
    started = time.monotonic()
    worker, outcome = run_in_background(ScriptRunner(), path, 1.0)
    pgid = int(fifo.read_text())
    worker.join(20)
    assert not worker.is_alive()
    assert time.monotonic() - started < 10
    assert len(outcome) == 1 and isinstance(outcome[0], BuildTimedOut)
    assert group_ends(pgid)


def test_kill_all_ends_running_scripts(tmp_path: Path) -> None:
    path, fifo = announcing_script(tmp_path)
    runner = ScriptRunner()
    worker, outcome = run_in_background(runner, path, 60)
    pgid = int(fifo.read_text())
    runner.kill_all()
    worker.join(20)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], BuildFailed)
    assert not isinstance(outcome[0], BuildTimedOut)
    assert group_ends(pgid)


def test_no_script_starts_after_kill_all(tmp_path: Path) -> None:
    """A stop that lands just before a script starts must not leave that script running."""
    path, _ = announcing_script(tmp_path)
    runner = ScriptRunner()
    runner.kill_all()
    with pytest.raises(BuildFailed, match="stopping"):
        runner.ingest_output(MemoryBlobStore(), str(path), {}, 30)
