"""Crash safety with real kills: kill -9 a real twistd at every phase (plan, build, ingest, assembly,
index write, GC), restart it on the same data dir, and check the store; SIGTERM mid-assembly ends fast;
a full disk (a small tmpfs) gives 503; a store cap holds over a sequence of pulls."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import OCI_ACCEPT, ForgeFactory, ForgeProcess, http_request, run_tool, wait_until

HEX64 = re.compile(r"[0-9a-f]{64}")
GC_RUN = re.compile(r"gc \((?P<reason>[^)]*)\): deleted (?P<blobs>\d+) blobs")


def pause(seconds: float) -> None:
    """Wait without sleeping the thread in a busy loop."""
    threading.Event().wait(seconds)


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_data_dir(data: Path) -> dict[str, int]:
    """Assert the store is whole: every blob file hashes to its name, nothing else is in the blob
    directory, and every index entry (records and retained superseded digests) names manifests
    whose config and layers are all stored. Return counts for the assertion messages."""
    blob_dir = data / "blobs" / "sha256"
    blobs = {}
    for path in blob_dir.iterdir():
        assert HEX64.fullmatch(path.name), f"not a blob name in the blob directory: {path.name}"
        assert path.is_file() and not path.is_symlink()
        assert file_digest(path) == path.name, f"blob {path.name} does not match its digest"
        blobs[path.name] = path

    def whole(digest: str, what: str) -> None:
        hex_digest = digest.removeprefix("sha256:")
        assert hex_digest in blobs, f"{what}: manifest {digest} is missing"
        manifest = json.loads(blobs[hex_digest].read_bytes())
        for child in [manifest["config"], *manifest["layers"]]:
            assert child["digest"].removeprefix("sha256:") in blobs, f"{what}: blob {child['digest']} is missing"
            assert blobs[child["digest"].removeprefix("sha256:")].stat().st_size == child["size"]

    records = 0
    for path in (data / "index").glob("r-*.json"):
        record = json.loads(path.read_text())
        whole(record["oci_digest"], f"{record['name']}:{record['tag']}")
        whole(record["docker_digest"], f"{record['name']}:{record['tag']}")
        records += 1
    for path in (data / "index").glob("d-*.json"):
        for digest, tag, _ in json.loads(path.read_text())["superseded"]:
            whole(digest, f"superseded {tag}")
    return {"blobs": len(blobs), "records": records}


def skopeo_copy(forge: ForgeProcess, name: str, target: Path) -> None:
    """Pull the whole image with skopeo, which checks every blob against its digest and size."""
    run_tool(["skopeo", "copy", "--src-tls-verify=false", f"docker://{forge.registry}/{name}:latest",
              f"oci:{target}:{name.replace('/', '-')}"], timeout=600)


@pytest.fixture
def background() -> Iterator[list[threading.Thread]]:
    """Threads of pulls left running into a kill; joined at the end."""
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(60)


def pull_in_background(forge: ForgeProcess, name: str, threads: list[threading.Thread]) -> None:
    """GET the manifest in a thread (the registry will be killed under it)."""
    url = forge.url(f"/v2/{name}/manifests/latest")

    def pull() -> None:
        try:
            http_request(url, headers={"Accept": OCI_ACCEPT}, timeout=300)
        except OSError:
            pass  # the registry died under it, as intended

    thread = threading.Thread(target=pull, daemon=True)
    thread.start()
    threads.append(thread)


PHASES = {
    # phase: (image, the log line that says the phase is running, seconds to wait before the kill)
    "plan": ("slowplan", re.compile(r"running \S+ .*eval.*#slowplan"), 1.0),
    "build": ("killbuild", re.compile(r"build started killbuild:latest"), 1.0),
    "ingest": ("slowingest", re.compile(r"ingesting the archive streamed by"), 1.5),
    "assembly": ("huge", re.compile(r"assembling huge from"), 3.0),
    "index write": ("tool-b", re.compile(r"storing the tag record of tool-b:latest"), 0.0),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_kill_9_at_each_phase_leaves_a_whole_store(
    phase: str, forge_factory: ForgeFactory, tmp_path: Path, background: list[threading.Thread]
) -> None:
    """kill -9 (the whole process group) mid-phase; restart; the store is whole and both images pull."""
    image, running, delay = PHASES[phase]
    forge = forge_factory("forge")
    forge.manifest("hello")  # an image stored before the crash
    pull_in_background(forge, image, background)
    forge.wait_for(running, 300, what=f"the {phase} phase")
    pause(delay)
    forge.kill()
    after_kill = check_data_dir(forge.data_dir)
    assert after_kill["records"] >= 1
    if phase == "index write":
        print(f"killed at the index write; tool-b record on disk: {after_kill['records'] == 2}")
    if phase in ("ingest", "assembly"):  # killed mid-blob: the half-written blob is a hidden temporary
        assert list((forge.data_dir / "tmp").iterdir())
    forge.start()
    forge.wait_for(GC_RUN, 120, what="the start-up GC run")
    for name in ("hello", image):
        skopeo_copy(forge, name, tmp_path / "copies")
    check_data_dir(forge.data_dir)
    assert not list((forge.data_dir / "tmp").iterdir())


def test_kill_9_in_the_middle_of_a_gc_sweep_is_finished_at_the_next_start(
    forge_factory: ForgeFactory, tmp_path: Path
) -> None:
    """A store with 50000 unreferenced blobs; kill -9 once the sweep has begun deleting them."""
    forge = forge_factory("forge")
    forge.manifest("hello")
    forge.stop()
    blob_dir = forge.data_dir / "blobs" / "sha256"
    for i in range(50000):
        data = b"garbage blob %d\n" % i
        (blob_dir / hashlib.sha256(data).hexdigest()).write_bytes(data)
    garbage_before = len(list(blob_dir.iterdir()))
    journal = forge.data_dir / "gc-journal.json"
    forge.start()
    assert wait_until(journal.exists, 60, interval=0.005), forge.log_tail()
    assert wait_until(lambda: sum(1 for _ in os.scandir(blob_dir)) < garbage_before, 30, interval=0.005)
    forge.kill()
    left = len(list(blob_dir.iterdir()))
    print(f"killed mid-sweep with {left} of {garbage_before} blobs left")
    assert journal.exists() and left < garbage_before  # killed mid-sweep: some went, the plan stays
    check_data_dir(forge.data_dir)
    forge.start()
    forge.wait_for(re.compile(r"finishing the GC journal of an interrupted run"), 60)
    forge.wait_for(GC_RUN, 120)
    assert not journal.exists()
    counts = check_data_dir(forge.data_dir)
    assert counts["blobs"] < 20 and counts["records"] == 1  # only hello's blobs are left
    skopeo_copy(forge, "hello", tmp_path / "copies")


def test_sigterm_during_an_assembly_ends_within_ten_seconds(forge_factory: ForgeFactory,
                                                              background: list[threading.Thread]) -> None:
    """Assembling `huge` takes far longer than 10 s; SIGTERM interrupts it between chunks."""
    forge = forge_factory("forge")
    pull_in_background(forge, "huge", background)
    forge.wait_for(re.compile(r"assembling huge from"), 300, what="the assembly of huge")
    pause(2.0)
    took = forge.kill(signal.SIGTERM, timeout=60)
    print(f"twistd stopped {took:.2f} s after SIGTERM mid-assembly")
    assert took < 10, f"twistd took {took:.1f} s to stop"
    assert not list((forge.data_dir / "tmp").iterdir())  # the half-written layer was removed
    assert "huge:latest" not in " ".join(forge.matching_lines(re.compile(r"build finished")))
    check_data_dir(forge.data_dir)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (needs root, as these machines give): a disk that really fills up."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}", pytrace=False)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_gives_503_leaves_nothing_partial_and_serving_goes_on(
    forge_factory: ForgeFactory, small_tmpfs: Path, tmp_path: Path
) -> None:
    """tool-a's 30 MiB random layer cannot fit a 24 MiB disk: 503 UNAVAILABLE + Retry-After, GC runs."""
    forge = forge_factory("forge", data_dir=small_tmpfs / "data")
    forge.manifest("hello")
    response = forge.get("/v2/tool-a/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 503, (response.status, response.body[:500])
    assert response.error_codes() == ["UNAVAILABLE"]
    assert "full" in response.json()["errors"][0]["message"]
    assert int(response.headers["retry-after"]) > 0
    forge.wait_for(re.compile(r"gc \(store full\)"), 60)
    assert not list((forge.data_dir / "tmp").iterdir())
    check_data_dir(forge.data_dir)
    skopeo_copy(forge, "hello", tmp_path / "copies")
    assert forge.manifest("applications/app1/web").status == 200


def blob_bytes(data: Path) -> int:
    return sum(path.stat().st_size for path in (data / "blobs" / "sha256").iterdir())


def test_the_store_stays_under_its_cap_over_a_sequence_of_pulls(forge_factory: ForgeFactory, tmp_path: Path) -> None:
    """Cap 3 MiB, images of about 1 MiB: GC after each build evicts the least recently pulled;
    an evicted image is rebuilt on its next pull."""
    cap = 3 << 20
    forge = forge_factory("forge", extra_args=["--max-store-size", "3M"])
    sizes = []
    sequence = ["hello", "applications/app1/web", "applications/app1/db", "capped-a", "capped-b", "hello"]
    gc_after_build = re.compile(r"gc \(after build\)")
    for name in sequence:
        forge.manifest(name)
        builds = len(forge.matching_lines(re.compile(r"build finished")))
        assert wait_until(lambda b=builds: len(forge.matching_lines(gc_after_build)) >= b, 60), forge.log_tail()
        sizes.append(blob_bytes(forge.data_dir))
    print(f"store bytes after each pull (cap {cap}): {sizes}")
    assert max(sizes[2:]) <= cap, sizes
    assert len(forge.matching_lines(re.compile(r"build started hello:latest"))) == 2  # evicted, rebuilt
    evictions = sum(int(m) for m in re.findall(r"evicted (\d+) images", forge.log_text()))
    assert evictions >= 3
    check_data_dir(forge.data_dir)
    skopeo_copy(forge, "hello", tmp_path / "copies")
