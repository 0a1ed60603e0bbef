"""One contract run against both locked-revision stores, plus durability of the filesystem one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from nixforge.store.interfaces import ILockedRevisions
from nixforge.store.locked_revisions import FilesystemLockedRevisions, MemoryLockedRevisions

FLAKE = "github:o/r"
REV_A = "a" * 40
REV_B = "b" * 40


class LockedRevisionsContract:
    """What every ILockedRevisions does; subclasses say how to make one."""

    def make(self, tmp_path: Path) -> ILockedRevisions:
        raise NotImplementedError

    def test_provides_the_interface(self, tmp_path: Path) -> None:
        assert verifyObject(ILockedRevisions, self.make(tmp_path))

    def test_an_unknown_revision_has_no_refs(self, tmp_path: Path) -> None:
        assert self.make(tmp_path).refs(FLAKE, REV_A) == frozenset()

    def test_refs_accumulate_per_revision(self, tmp_path: Path) -> None:
        revisions = self.make(tmp_path)
        revisions.record(FLAKE, REV_A, "latest")
        revisions.record(FLAKE, REV_A, "main")
        revisions.record(FLAKE, REV_A, "main")
        revisions.record(FLAKE, REV_B, "v1")
        assert revisions.refs(FLAKE, REV_A) == {"latest", "main"}
        assert revisions.refs(FLAKE, REV_B) == {"v1"}

    def test_revisions_are_per_flake(self, tmp_path: Path) -> None:
        revisions = self.make(tmp_path)
        revisions.record(FLAKE, REV_A, "latest")
        assert revisions.refs("github:o/other", REV_A) == frozenset()
        assert revisions.refs(FLAKE + "?dir=sub", REV_A) == frozenset()


class TestMemoryLockedRevisions(LockedRevisionsContract):
    def make(self, tmp_path: Path) -> ILockedRevisions:
        return MemoryLockedRevisions()


class TestFilesystemLockedRevisions(LockedRevisionsContract):
    def make(self, tmp_path: Path) -> ILockedRevisions:
        return FilesystemLockedRevisions(str(tmp_path))

    def test_revisions_survive_a_restart(self, tmp_path: Path) -> None:
        first = FilesystemLockedRevisions(str(tmp_path))
        first.record(FLAKE, REV_A, "latest")
        first.record(FLAKE, REV_A, "main")
        first.record("git+file:///srv/f", REV_B, "v1")
        again = FilesystemLockedRevisions(str(tmp_path))
        assert again.refs(FLAKE, REV_A) == {"latest", "main"}
        assert again.refs("git+file:///srv/f", REV_B) == {"v1"}

    def test_one_file_per_revision_holding_flake_revision_and_refs(self, tmp_path: Path) -> None:
        revisions = FilesystemLockedRevisions(str(tmp_path))
        revisions.record(FLAKE, REV_A, "main")
        revisions.record(FLAKE, REV_A, "latest")
        [name] = os.listdir(tmp_path / "revisions")
        document = json.loads((tmp_path / "revisions" / name).read_text())
        assert document == {"format": 1, "flake": FLAKE, "revision": REV_A, "refs": ["latest", "main"]}
        assert revisions.path(FLAKE, REV_A) == str(tmp_path / "revisions" / name)

    def test_a_known_ref_writes_nothing(self, tmp_path: Path) -> None:
        revisions = FilesystemLockedRevisions(str(tmp_path))
        revisions.record(FLAKE, REV_A, "latest")
        path = Path(revisions.path(FLAKE, REV_A))
        os.utime(path, (1, 1))
        revisions.record(FLAKE, REV_A, "latest")
        assert path.stat().st_mtime == 1

    def test_bad_and_temporary_files_are_skipped_at_start_up(self, tmp_path: Path) -> None:
        good = FilesystemLockedRevisions(str(tmp_path))
        good.record(FLAKE, REV_A, "latest")
        directory = tmp_path / "revisions"
        (directory / ".tmp-half").write_bytes(b'{"format": 1, "fl')
        (directory / "garbage.json").write_text("not json")
        # A file whose content names another revision than its file name: never trusted.
        forged = {"format": 1, "flake": FLAKE, "revision": REV_B, "refs": ["latest"]}
        (directory / ("0" * 64 + ".json")).write_text(json.dumps(forged))
        with capturedLogs() as events:
            again = FilesystemLockedRevisions(str(tmp_path))
        assert again.refs(FLAKE, REV_A) == {"latest"}
        assert again.refs(FLAKE, REV_B) == frozenset()
        assert not (directory / ".tmp-half").exists()
        assert sum("skipping unreadable" in event["log_format"] for event in events) == 2
