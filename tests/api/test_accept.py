"""Table-driven tests of Accept parsing, q-values and the choice between OCI and Docker forms."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from nixforge.api.accept import choose_manifest, parse_accept, quality_of
from nixforge.oci import media_types as mt
from nixforge.oci.documents import LayerBlob, build_manifests

OCI = mt.OCI_MANIFEST
DOCKER = mt.DOCKER_MANIFEST
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MANIFESTS = build_manifests("sha256:" + "c" * 64, 10, [LayerBlob("sha256:" + "d" * 64, 5, "sha256:" + "e" * 64)])


@pytest.mark.parametrize(
    ("headers", "form"),
    [
        ([], "oci"),
        ([""], "oci"),
        ([OCI], "oci"),
        ([DOCKER], "docker"),
        ([DOCKER, OCI], "oci"),
        ([f"{DOCKER}, {OCI}"], "oci"),
        ([f"{OCI}, {DOCKER}"], "oci"),
        ([f"{OCI};q=0.5, {DOCKER}"], "docker"),
        ([f"{OCI}; q=0.5", f"{DOCKER}; q=0.6"], "docker"),
        ([f"{OCI};q=0.6", f"{DOCKER};q=0.5"], "oci"),
        ([f"{DOCKER};q=1.0, {OCI};q=0.999"], "docker"),
        ([f"{OCI};q=0, {DOCKER};q=0.1"], "docker"),
        ([f"{OCI};q=0, */*"], "docker"),
        ([f"{DOCKER};q=0, */*"], "oci"),
        ([f"{DOCKER};q=0"], "oci"),
        ([f"{OCI};q=0, {DOCKER};q=0"], "oci"),
        (["*/*"], "oci"),
        (["*"], "oci"),
        (["application/*"], "oci"),
        ([f"application/*;q=0.9, {DOCKER}"], "docker"),
        ([f"application/*, {DOCKER};q=0.5"], "oci"),
        ([f"{DOCKER}, */*;q=0.1"], "docker"),
        ([SCHEMA1], "oci"),
        (["application/json"], "oci"),
        (["text/*"], "oci"),
        ([DOCKER.upper()], "docker"),
        ([f"{DOCKER};q=abc"], "oci"),
        ([f"{DOCKER};q=2"], "oci"),
        ([f"{DOCKER};q=-1"], "oci"),
        ([f"{DOCKER};charset=utf-8;q=0.9, {OCI};q=0.8"], "docker"),
        ([f"garbage, {DOCKER}"], "docker"),
        ([f"*/json, {DOCKER}"], "docker"),
    ],
)
def test_choose_manifest(headers: list[str], form: str) -> None:
    assert choose_manifest(headers, MANIFESTS) is getattr(MANIFESTS, form)


def test_parse_accept() -> None:
    accept = parse_accept(["text/html;level=1;q=0.5, Application/JSON", "*; q=0.1", "bad;q=x, */x"])
    assert quality_of(accept, "text/html") == 0.5
    assert quality_of(accept, "application/json") == 1.0
    assert quality_of(accept, "image/png") == 0.1


def test_werkzeug_alone_ignores_a_bare_star() -> None:
    """Why `_range_and_quality` exists (1): werkzeug drops `*` (Java's HttpURLConnection sends `*; q=.2`)."""
    assert parse_accept_header("*; q=0.2", MIMEAccept).quality(OCI) == 0
    assert quality_of(parse_accept(["*; q=0.2"]), OCI) == 0.2


def test_werkzeug_alone_lets_a_parameter_stop_a_match() -> None:
    """Why `_range_and_quality` exists (2): `<docker type>;charset=utf-8` must still match the Docker type."""
    assert parse_accept_header(f"{DOCKER};charset=utf-8;q=0.9", MIMEAccept).quality(DOCKER) == 0
    assert quality_of(parse_accept([f"{DOCKER};charset=utf-8;q=0.9"]), DOCKER) == 0.9


@pytest.mark.parametrize(
    ("header", "quality"),
    [
        ("", 0.0),
        (f"{OCI}", 1.0),
        (f"{OCI};q=0.3", 0.3),
        (f"*/*;q=0.2, application/*;q=0.4, {OCI};q=0.6", 0.6),
        ("*/*;q=0.2, application/*;q=0.4", 0.4),
        ("*/*;q=0.2, text/*", 0.2),
        (f"*/*, {OCI};q=0", 0.0),
        (f"{OCI};q=0.2, {OCI};q=0.7", 0.7),
        ("application/*;q=0", 0.0),
    ],
)
def test_quality_of_most_specific_range(header: str, quality: float) -> None:
    assert quality_of(parse_accept([header]), OCI) == quality
