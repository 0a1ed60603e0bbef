"""Image scripts run as the configured user when nixforge is root, always with a minimal environment."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixforge.images.image_script import ScriptRunner
from nixforge.images.script_user import SCRIPT_ENVIRONMENT, ScriptUser
from nixforge.store.memory import MemoryBlobStore
from tests.oci.archive_builders import docker_archive_members, sample_layers, tar_bytes


def test_as_root_the_named_user_is_resolved() -> None:
    nobody = pwd.getpwnam("nobody")
    user = ScriptUser.for_this_process("nobody", euid=0)
    assert user == ScriptUser("nobody", nobody.pw_uid, nobody.pw_gid)
    assert user.popen_arguments() == {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def test_not_root_scripts_run_as_ourselves() -> None:
    assert ScriptUser.for_this_process("nobody", euid=1000) is None


def test_an_unknown_user_is_an_error_even_when_not_root() -> None:
    with pytest.raises(KeyError):
        ScriptUser.for_this_process("no-such-user-here", euid=1000)


def test_the_script_environment_is_minimal() -> None:
    assert SCRIPT_ENVIRONMENT == {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}


def reporting_script(tmp_path: Path, report: Path) -> Path:
    """A script that writes its ids, groups, cwd and environment to `report`, then streams an archive."""
    archive = tmp_path / "image.tar"
    archive.write_bytes(tar_bytes(docker_archive_members(sample_layers())))
    archive.chmod(0o644)
    path = tmp_path / "stream"
    path.write_text(
        "#!/bin/sh\n"
        f"{{ echo uid=$(/usr/bin/id -u) gid=$(/usr/bin/id -g) groups=$(/usr/bin/id -G) cwd=$(pwd); "
        f"/usr/bin/env; }} > {report}\n"
        f"exec /bin/cat {archive}\n"
    )
    path.chmod(0o755)
    return path


def test_a_script_sees_only_the_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIXFORGE_TEST_SECRET", "do-not-leak")
    report = tmp_path / "report"
    ScriptRunner().ingest_output(MemoryBlobStore(), str(reporting_script(tmp_path, report)), {}, 30)
    lines = report.read_text().splitlines()
    environment = dict(line.split("=", 1) for line in lines[1:])
    environment.pop("PWD", None)  # the shell sets it itself
    environment.pop("SHLVL", None)
    assert environment == SCRIPT_ENVIRONMENT
    assert lines[0].endswith("cwd=/")
    assert f"uid={os.geteuid()} " in lines[0]


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="nf-script-user-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (the e2e suite runs as root)")
def test_as_root_a_script_runs_as_the_user_without_supplementary_groups(public_dir: Path) -> None:
    tmp_path = public_dir
    report_dir = tmp_path / "out"
    report_dir.mkdir()
    report_dir.chmod(0o777)
    report = report_dir / "report"
    user = ScriptUser.for_this_process("nobody")
    assert user is not None
    ScriptRunner(user).ingest_output(MemoryBlobStore(), str(reporting_script(tmp_path, report)), {}, 30)
    first = report.read_text().splitlines()[0]
    assert first.startswith(f"uid={user.uid} gid={user.gid} groups={user.gid} ")
