"""Persistence and robustness of the filesystem tag index (its contract: test_index_contract.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from twisted.logger import capturedLogs

from nixforge.store.durable_index import FilesystemTagIndex
from nixforge.store.interfaces import TagRecord


def digest(seed: str) -> str:
    """Return a well-formed, recognisable sha256 digest."""
    return "sha256:" + (seed.encode().hex() * 64)[:64]


def record(name: str, tag: str, seed: str = "a", built_at: float = 1.5, **extra: object) -> TagRecord:
    """Return a TagRecord whose digests derive from `seed`."""
    return TagRecord(
        name=name,
        tag=tag,
        oci_digest=digest("oci" + seed),
        docker_digest=digest("docker" + seed),
        built_at=built_at,
        source="path:/flake#" + name,
        **extra,
    )


# The contract of every index is in test_index_contract.py.


# Filesystem index only.


def test_survives_reopen(tmp_path: Path) -> None:
    """Records, names, tags and the digest history are all there after a restart."""
    first = FilesystemTagIndex(str(tmp_path))
    first.put(record("hello", "latest", seed="old"))
    first.put(record("hello", "latest", seed="new", immutable=True))
    first.put(record("packages/hello", "abc123"))
    first.put(record("applications/web/server", "v1", built_at=3))
    again = FilesystemTagIndex(str(tmp_path))
    assert again.get("hello", "latest") == record("hello", "latest", seed="new", immutable=True)
    assert again.get("applications/web/server", "v1") == record("applications/web/server", "v1", built_at=3)
    assert again.names() == ["applications/web/server", "hello", "packages/hello"]
    assert again.tags("packages/hello") == ["abc123"]
    assert again.has_manifest("hello", digest("ociold"))
    assert again.has_manifest("hello", digest("dockerold"))
    assert again.has_manifest("hello", digest("docker" + "new"))
    assert not again.has_manifest("packages/hello", digest("ociold"))


def test_an_index_records_other_manifests_durably_and_older_records_still_load(tmp_path: Path) -> None:
    """`manifests` (index members, SBOM artifacts) survive a restart and count as the name's manifests;
    a record written before the field existed loads with none."""
    first = FilesystemTagIndex(str(tmp_path))
    first.put(record("hello", "latest", manifests=(digest("member"), digest("sbom"))))
    first.put(record("old", "latest"))
    path = Path(first.record_path("old", "latest"))
    saved = json.loads(path.read_text())
    del saved["manifests"]
    path.write_text(json.dumps(saved))
    again = FilesystemTagIndex(str(tmp_path))
    assert again.get("hello", "latest") == record("hello", "latest", manifests=(digest("member"), digest("sbom")))
    assert again.has_manifest("hello", digest("member")) and again.has_manifest("hello", digest("sbom"))
    assert not again.has_manifest("old", digest("member"))
    assert again.get("old", "latest") == record("old", "latest")
    path.write_text(json.dumps({**saved, "manifests": [7]}))
    assert FilesystemTagIndex(str(tmp_path)).get("old", "latest") is None


def test_files_are_flat_hashed_and_self_describing(tmp_path: Path) -> None:
    """Names with slashes or dots create no subdirectories; the JSON holds the name and tag."""
    index = FilesystemTagIndex(str(tmp_path))
    index.put(record("../../escape/name", "..", seed="w"))
    index.put(record("../../escape/name", "..", seed="x"))
    directory = tmp_path / "index"
    assert sorted(p.name[:2] for p in tmp_path.rglob("*") if p.is_file()) == ["d-", "r-"]
    assert all(p.parent == directory for p in tmp_path.rglob("*") if p.is_file())
    saved = json.loads(Path(index.record_path("../../escape/name", "..")).read_text())
    assert (saved["name"], saved["tag"], saved["oci_digest"]) == ("../../escape/name", "..", digest("ocix"))
    assert FilesystemTagIndex(str(tmp_path)).get("../../escape/name", "..") is not None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00",
        b"[" * 100000,
        b"[]",
        b'{"format": 1, "name": "hello"}',
        b'{"format": 2, "name": "hello", "tag": "latest"}',
    ],
)
def test_corrupt_record_is_skipped(tmp_path: Path, content: bytes) -> None:
    """An unreadable record file is skipped with a warning; the others still load."""
    index = FilesystemTagIndex(str(tmp_path))
    index.put(record("hello", "latest"))
    index.put(record("bash", "latest"))
    Path(index.record_path("bash", "latest")).write_bytes(content)
    with capturedLogs() as events:
        again = FilesystemTagIndex(str(tmp_path))
    assert again.get("hello", "latest") == record("hello", "latest")
    assert again.get("bash", "latest") is None
    assert again.names() == ["hello"]
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert [e["path"] for e in warnings] == [index.record_path("bash", "latest")]


def test_wrong_field_types_are_skipped(tmp_path: Path) -> None:
    """A record whose fields have the wrong types (a bool for a time, a number for a digest) is skipped."""
    index = FilesystemTagIndex(str(tmp_path))
    index.put(record("hello", "latest"))
    path = Path(index.record_path("hello", "latest"))
    good = json.loads(path.read_text())
    for field, value in [("built_at", True), ("oci_digest", 7), ("immutable", "yes")]:
        path.write_text(json.dumps({**good, field: value}))
        with capturedLogs() as events:
            assert FilesystemTagIndex(str(tmp_path)).get("hello", "latest") is None
        assert any(e["log_level"].name == "warn" for e in events)


def test_misplaced_record_is_skipped(tmp_path: Path) -> None:
    """A record stored under another (name, tag)'s file name is not trusted."""
    index = FilesystemTagIndex(str(tmp_path))
    index.put(record("hello", "latest"))
    os.rename(index.record_path("hello", "latest"), index.record_path("hello", "v9"))
    with capturedLogs():
        again = FilesystemTagIndex(str(tmp_path))
    assert again.names() == []


def test_corrupt_history_is_skipped(tmp_path: Path) -> None:
    """A damaged history file loses only the superseded digests; current ones still count."""
    index = FilesystemTagIndex(str(tmp_path))
    index.put(record("hello", "latest", seed="1"))
    index.put(record("hello", "latest", seed="2"))
    Path(index.history_path("hello")).write_text('{"name": "hello", "digests": "oops"}')
    with capturedLogs() as events:
        again = FilesystemTagIndex(str(tmp_path))
    assert any(e["log_level"].name == "warn" for e in events)
    assert again.has_manifest("hello", digest("oci2"))
    assert not again.has_manifest("hello", digest("oci1"))


def test_stray_entries_do_not_stop_start_up(tmp_path: Path) -> None:
    """Temporaries are removed; unknown files are skipped with a warning, empty directories silently."""
    index = FilesystemTagIndex(str(tmp_path))
    index.put(record("hello", "latest"))
    directory = tmp_path / "index"
    (directory / ".tmp-crashed").write_text('{"half')
    (directory / "notes.txt").write_text("hi")
    (directory / "r-subdir").mkdir()
    with capturedLogs() as events:
        again = FilesystemTagIndex(str(tmp_path))
    assert again.get("hello", "latest") == record("hello", "latest")
    assert not (directory / ".tmp-crashed").exists()
    # notes.txt warns; an empty directory holds no record, so it is not one.
    assert len([e for e in events if e["log_level"].name == "warn"]) == 1
