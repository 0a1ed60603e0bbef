"""Redaction: what error answers and labels may show of flake refs, paths and OSErrors."""

import errno
import os

import pytest

from nixforge.redaction import Verbatim, redact, redact_value


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


@pytest.mark.parametrize("text", [
    "/",
    "no such endpoint: GET /",
    "use <pkg>, packages/<pkg> or applications/<app>/<image>",
    "GET /v2/<name>/manifests/<reference>",
    "see /-/builds/3f2a9c1d7e6b/log",
    "POST /-/refresh/hello",
    "/v2/hello/blobs/sha256:" + "a" * 64,
    "/healthz", "/readyz", "/metrics",
    "allowed from 10.0.0.0/8",
])
def test_the_registrys_own_words_are_kept(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("text, expected", [
    ("/v2/../etc/shadow", "<host path>"),
    ("/-/../../root/.ssh/id_ed25519", "<host path>"),
    ("/v20/data", "<host path>"),
    ("/healthz/../etc", "<host path>"),
    ("/metricsx", "<host path>"),
    ("echo hi >/tmp/out", "echo hi ><host path>"),
    ("error: opening /home/me/src/app/flake.nix", "error: opening <host path>"),
    ("/etc", "<host path>"),
])
def test_host_paths_next_to_the_registrys_words_still_go(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_verbatim_text_is_shown_as_it_is() -> None:
    path = Verbatim("/etc/passwd")
    assert redact(path) == "/etc/passwd"
    assert redact_value({"path": path, "log": ["in /etc/passwd"]}) == {"path": "/etc/passwd", "log": ["in <host path>"]}
    assert redact_value({Verbatim("/a/b"): 1, "/c/d": 2}) == {"/a/b": 1, "<host path>": 2}
