"""The web pages in memory: escaping, headers, 404s, the facts they read (the browser tests are in tests/e2e)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import Any, BinaryIO

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet.defer import Deferred, succeed
from twisted.web.template import flattenString
from twisted.web.test.requesthelper import DummyRequest

from nixforge.api.builds import BuildBook
from nixforge.api.ui import CONTENT_SECURITY_POLICY, UiPages
from nixforge.api.ui_facts import StoreUsage, UiFacts, shown_revision
from nixforge.api.ui_pages import Build, failure_text, size
from nixforge.errors import BlobUnknown
from nixforge.images.build_events import BuildStart
from nixforge.oci import media_types as mt
from nixforge.oci.documents import canonical_json, sha256_digest
from nixforge.oci.layer_paths import store_paths_in_layer
from nixforge.store.interfaces import TagRecord


def layer_bytes(names: list[str], compress: bool = True) -> bytes:
    """A tar (gzipped if asked) with an empty file or directory at each name."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            tar.addfile(info, io.BytesIO(b""))
    return gzip.compress(raw.getvalue()) if compress else raw.getvalue()


@pytest.mark.parametrize("compress", [True, False])
def test_a_layer_lists_the_store_paths_it_holds(compress: bool) -> None:
    data = layer_bytes(["nix/", "nix/store/", "./nix/store/aaa-hello/", "./nix/store/aaa-hello/bin/hello",
                        "nix/store/bbb-glibc/lib/libc.so", "etc/passwd", "bin/sh"], compress)
    assert store_paths_in_layer(io.BytesIO(data)) == ["/nix/store/aaa-hello", "/nix/store/bbb-glibc"]


def test_a_revision_is_shown_from_the_locked_query_with_its_plus_signs() -> None:
    assert shown_revision("path:/x?lastModified=1&narHash=sha256-a%2Bb+c=") == "narHash=sha256-a+b+c="
    assert shown_revision("git+https://example/r?ref=main&rev=0123abc") == "rev=0123abc"
    assert shown_revision("github:o/r/0123abc") is None


def test_sizes_read_as_people_write_them() -> None:
    assert [size(n) for n in (0, 1023, 1024, 5 << 20, 3 << 30)] == ["0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 GiB"]


def _build(error: str | None = "nix build failed") -> dict[str, Any]:
    return {"id": "abc123", "name": "hello", "tag": "latest", "locked": "path:<host path>", "revision": None,
            "phase": "done", "state": "failure" if error else "running", "started": "2026-12-05T10:00:00Z",
            "finished": None, "error": error}


@ensureDeferred
async def test_markup_in_a_log_line_is_escaped() -> None:
    lines = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">', "error: builder failed"]
    html = (await flattenString(None, Build(_build(), lines))).decode()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=\"alert(2)\"&gt;" in html or "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html


def test_the_failure_reason_adds_nix_error_lines_only_for_a_failed_build() -> None:
    lines = ["building x", "error: builder for '/nix/store/x.drv' failed", "[nixforge: build failure]"]
    assert failure_text(_build(), lines) == "nix build failed\nerror: builder for '/nix/store/x.drv' failed"
    assert failure_text(_build(error=None), lines) == ""


@ensureDeferred
async def test_a_running_build_names_the_log_to_follow_and_a_finished_one_does_not() -> None:
    running = (await flattenString(None, Build(_build(error=None), []))).decode()
    assert 'data-follow="/-/builds/abc123/log"' in running
    failed = (await flattenString(None, Build(_build(), []))).decode()
    assert "data-follow" not in failed


class _Images:
    """The read-only views UiFacts uses, over one stored image in memory."""

    flake = "path:/srv/secret-flake?token=abc"

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        layer = layer_bytes(["nix/store/aaa-hello/bin/hello"])
        self.layer = self._put(layer)
        config = self._put(b"{}")
        manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                    "config": {"mediaType": mt.OCI_CONFIG, "digest": config, "size": 2},
                    "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": self.layer, "size": len(layer)}]}
        self.manifest = self._put(canonical_json(manifest))
        self.record = TagRecord("hello", "latest", self.manifest, self.manifest, 1_000_000.0, "path:/x")

    def _put(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return digest

    def latest_catalog(self) -> tuple[str, float, list[str] | None] | None:
        return "path:/srv/secret-flake?narHash=sha256-x", 1_000_000.0, ["hello", "world"]

    def stored_records(self) -> list[TagRecord]:
        return [self.record]

    def open_stored(self, digest: str) -> BinaryIO:
        if digest not in self.blobs:
            raise BlobUnknown("blob unknown", {"digest": digest})
        return io.BytesIO(self.blobs[digest])


def _pages(images: _Images) -> UiPages:
    def run_in_thread(function: Any, *args: Any) -> Deferred[Any]:
        return succeed(function(*args))

    book = BuildBook()
    book.build_started(BuildStart("b1", "world", "latest", "path:/srv/secret-flake", None, 1_000_000.0, 0.5))
    facts = UiFacts(images, book, run_in_thread, lambda: StoreUsage(10, 3, 100), lambda name, tag: None)
    return UiPages(facts)


async def _get(pages: UiPages, path: str | None) -> tuple[DummyRequest, str]:
    request = DummyRequest([b""])
    request.requestHeaders.setRawHeaders(b"host", [b"forge.example:5000"])
    body = await pages.render(request, path)
    return request, body.decode()


@ensureDeferred
async def test_the_start_page_lists_pull_commands_and_hides_host_paths() -> None:
    request, html = await _get(_pages(_Images()), None)
    assert request.responseHeaders.getRawHeaders(b"content-security-policy") == [CONTENT_SECURITY_POLICY.encode()]
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert "podman pull forge.example:5000/world:latest" in html
    assert 'href="/ui/builds/b1"' in html  # the running build
    assert ">hello:latest<" in html  # the stored tag
    assert "/srv/secret-flake" not in html and "token=abc" not in html
    assert "<script" in html and html.count("<script") == 1  # ui.js alone
    assert json.dumps("style=") not in html and " style=" not in html and "onclick" not in html


@ensureDeferred
async def test_a_package_page_shows_digest_layers_and_store_paths() -> None:
    images = _Images()
    _, html = await _get(_pages(images), "hello")
    assert images.manifest in html and images.layer in html
    assert "/nix/store/aaa-hello" in html


@ensureDeferred
async def test_unknown_pages_are_html_404s() -> None:
    pages = _pages(_Images())
    for path in ("nothing-here", "builds/unknown", "UPPER", "a//b"):
        request, html = await _get(pages, path)
        assert request.responseCode == 404, path
        assert "<h1>" in html
    request, body = await _get(pages, "-/static/../../etc/passwd")
    assert request.responseCode == 404 and body == "no such file\n"


@ensureDeferred
async def test_the_static_files_are_served_with_their_types() -> None:
    pages = _pages(_Images())
    request, body = await _get(pages, "-/static/ui.js")
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/javascript; charset=utf-8"]
    assert "innerHTML" not in body and "textContent" in body
    request, _ = await _get(pages, "-/static/ui.css")
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/css; charset=utf-8"]


@ensureDeferred
async def test_a_tag_whose_manifest_is_gone_is_left_out_and_the_page_still_renders() -> None:
    images = _Images()
    del images.blobs[images.manifest]  # GC took it between the index read and the page
    request, html = await _get(_pages(images), None)
    assert request.responseCode in (None, 200)  # DummyRequest: None until a code is set
    assert ">hello:latest<" not in html and "Nothing built yet" in html
    assert "podman pull forge.example:5000/hello:latest" in html
