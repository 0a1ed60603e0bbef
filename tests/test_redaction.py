"""Redaction: what error answers and labels may show of flake refs, paths and OSErrors."""

import errno
import os

import pytest

from nixforge.redaction import redact, redact_value


@pytest.mark.parametrize("text, expected", [
    ("path:/srv/flake", "path:<host path>"),
    ('"path:/tmp/x#hello"', '"path:<host path>#hello"'),
    ("git+https://user:tok@git.example/o/r?ref=main&rev=abc", "git+https://<credentials>@git.example/o/r"),
    ("git+file:///srv/repo?ref=x", "git+file://<host path>"),
    ("github:o/r?dir=sub&token=x", "github:o/r"),
    ("https://x:y@h/a.tar.gz?token=1 fetched", "https://<credentials>@h/a.tar.gz fetched"),
    ("error: getting status of /srv/f/flake.nix: No such file", "error: getting status of <host path>: No such file"),
    ("hello> building in /tmp/nix-build-x.drv-0", "hello> building in <host path>"),
    ("see /nix/store/../etc/passwd", "see <host path>"),
    ("see /-/../etc/passwd", "see <host path>"),
])
def test_secrets_and_host_paths_are_scrubbed(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "github:o/r/main", "https://github.com/o/r", "/nix/store/abc-hello/bin/hello", "sha256:" + "a" * 64,
    "hello> compiling main.c", "v2/a/b/manifests/latest", "cannot open ./busybox",
    "follow its log at /-/builds/0123456789ab/log", "/-/builds/0123456789ab/log",
])
def test_harmless_text_is_kept(text: str) -> None:
    assert redact(text) == text


def test_os_error_text_loses_its_file_names() -> None:
    error = OSError(errno.ENOENT, os.strerror(errno.ENOENT), "/var/lib/nixforge/blobs/sha256/x")
    assert redact(str(error)) == "[Errno 2] No such file or directory"
    renamed = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/data/a", None, "/data/b")
    assert "/data" not in redact(str(renamed))


def test_values_are_redacted_all_the_way_down() -> None:
    value = {"flake": "path:/srv/f", "log": ["ok", "in /home/me/x"], "n": 3, "nested": {"/etc": ("a",)}}
    assert redact_value(value) == {
        "flake": "path:<host path>", "log": ["ok", "in <host path>"], "n": 3, "nested": {"<host path>": ["a"]},
    }
