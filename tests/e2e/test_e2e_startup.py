"""Start-up of a real twistd with an unusable data dir: one line on stderr, exit status 1, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import nix_env, require_tool, twistd_path

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory under /tmp that user nobody can enter (pytest's own tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="nf-startup-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(data_dir: Path, tac: bool, cwd: Path, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """Run twistd (the plugin with --data-dir, or the tac with NIXFORGE_DATA_DIR) until it exits."""
    env = nix_env()
    if tac:
        argv = [str(twistd_path()), "-n", "--pidfile=", "-y", str(REPO / "forge.tac")]
        env.update({"NIXFORGE_DATA_DIR": str(data_dir), "FLASK_HOST": "127.0.0.1", "FLASK_PORT": "0"})
    else:
        argv = [str(twistd_path()), "-n", "--pidfile=", "nixforge", "--port", "tcp:0:interface=127.0.0.1",
                "--flake", "path:/nonexistent", "--data-dir", str(data_dir)]
    if as_nobody:
        argv = [require_tool("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], data_dir: Path) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "listening on" not in output, output
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("nixforge: cannot use the data dir") and str(data_dir) in line, output


@pytest.mark.parametrize("tac", [False, True], ids=["plugin", "tac"])
@pytest.mark.parametrize("kind", ["a regular file", "below a regular file"])
def test_a_file_as_data_dir_ends_start_up_with_one_line(shared_tmp: Path, tac: bool, kind: str) -> None:
    regular = shared_tmp / "file"
    regular.write_text("not a directory")
    data_dir = regular if kind == "a regular file" else regular / "data"
    assert_one_line_refusal(start(data_dir, tac, shared_tmp), data_dir)
    assert regular.read_text() == "not a directory"


@pytest.mark.parametrize("tac", [False, True], ids=["plugin", "tac"])
def test_a_read_only_data_dir_ends_start_up_with_one_line(shared_tmp: Path, tac: bool) -> None:
    # root may write anywhere: the registry runs as nobody here, for whom the directory is read-only.
    read_only = shared_tmp / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    result = start(read_only, tac, shared_tmp, as_nobody=True)
    assert_one_line_refusal(result, read_only)
    assert "Permission denied" in result.stderr
    assert os.listdir(read_only) == []
