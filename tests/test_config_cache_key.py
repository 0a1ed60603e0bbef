"""NIXFORGE_CACHE_KEY_FILE / --cache-key-file: empty means no cache; a file must hold a Nix secret key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nixforge.config import ConfigError, ForgeConfig


def test_no_key_by_default() -> None:
    assert ForgeConfig.from_sources({}).cache_key_file == ""


def test_a_key_nix_made_is_taken_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["nix-store", "--generate-binary-cache-key", "forge-1", str(tmp_path / "sec"),
                    str(tmp_path / "pub")], check=True)
    monkeypatch.chdir(tmp_path)
    assert ForgeConfig.from_sources({"NIXFORGE_CACHE_KEY_FILE": "sec"}).cache_key_file == str(tmp_path / "sec")
    assert ForgeConfig.from_sources({}, {"cache-key-file": str(tmp_path / "sec")}).cache_key_file == str(
        tmp_path / "sec")


@pytest.mark.parametrize(("content", "reason"), [
    (None, "cannot read it"),
    ("forge-1:" + "A" * 20, "64 bytes"),
    ("no colon here", "<name>:<base64>"),
])
def test_a_bad_key_stops_the_start(tmp_path: Path, content: str | None, reason: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        ForgeConfig.from_sources({"NIXFORGE_CACHE_KEY_FILE": str(path)})
    assert "NIXFORGE_CACHE_KEY_FILE" in str(caught.value) and reason in str(caught.value)
