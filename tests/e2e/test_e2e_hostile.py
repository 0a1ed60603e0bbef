"""Hostile input, property-based: over 10,000 hypothesis cases against a real `twistd -n nixforge` over TCP.

Why a real twistd rather than a Site in process: the whole edge is under test as deployed (the tap's
wiring, EdgeSite, Klein, the image service and its Nix client), and "no Nix process for invalid input"
is checked where it matters, at the process boundary. The registry's `--nix` is a recording fake: a
shell script that appends each invocation to a file and fails as Nix does for a missing attribute.
Before the fake takes over, the real Nix builds `hello` on the same data dir, so manifests, blobs,
Range and tag lists have something real to serve (a stored, fresh image runs no Nix).

Every case must get a complete answer (never a bare close), never a 5xx, a JSON OCI error for every
4xx, the expected error code where the grammar decides it, and no new Nix invocation when the input
is invalid. Raw sockets, keep-alive while the server keeps the connection. The Host header has a
grammar of its own (a malformed one is a JSON 400, never werkzeug's HTML 500), and thousands of one
remembered answer must leave the registry's RSS flat.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import pytest
from e2e_support import ForgeProcess, vm_rss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixforge.references import DIGEST_PATTERN, NAME_PATTERN, TAG_PATTERN

CASES: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()
KNOWN_CODES = {
    "NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID", "PAGINATION_NUMBER_INVALID", "NAME_UNKNOWN",
    "MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "UNSUPPORTED", "RANGE_INVALID", "UNAUTHORIZED", "UNAVAILABLE",
}


def fuzz(cases: int) -> settings:
    """Hypothesis settings of one property: `cases` examples, no deadline, no example database."""
    return settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))


# Locks any flake (as `nix flake metadata --json` does); every other command fails as for a missing attribute.
FAKE_NIX = """#!/bin/sh
printf '%s\\n' "$*" >> {log}
if [ "$1" = flake ] && [ "$2" = metadata ]; then
    echo '{{"url": "path:/fuzz?narHash=sha256-fuzz", "locked": {{"type": "path", "path": "/fuzz"}}}}'
    exit 0
fi
echo '@nix {{"action":"msg","level":0,"msg":"error: flake does not provide attribute packages.x86_64-linux.x"}}' >&2
exit 1
"""


class Answer:
    """One HTTP response read off the wire."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def error_code(self) -> str:
        assert self.headers.get("content-type") == "application/json", (self.status, self.headers, self.body[:300])
        errors = json.loads(self.body)["errors"]
        assert len(errors) == 1 and set(errors[0]) == {"code", "message", "detail"}, self.body[:300]
        return errors[0]["code"]


class Wire:
    """A raw HTTP/1.1 client on one kept-alive connection, reconnecting after the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def _fill(self) -> bool:
        assert self.sock is not None
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    def exchange(self, raw: bytes, head_only: bool = False) -> Answer:
        """Send one request; return the whole response; fail if the connection closes without one."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            self.sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early: the answer is already on its way
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                self.close()
                raise AssertionError(f"connection closed without an answer to {raw[:200]!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only or status == 304 else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                self.close()
                raise AssertionError(f"body cut short for {raw[:200]!r}")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(status, headers, body)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, flake_ref: str) -> Iterator[tuple[ForgeProcess, Path, dict]]:
    """A registry that built hello with real Nix, restarted on a recording fake Nix: (forge, log, facts)."""
    work_dir = tmp_path_factory.mktemp("hostile")
    data_dir = work_dir / "data"
    builder = ForgeProcess(flake_ref=flake_ref, data_dir=data_dir, work_dir=work_dir / "real").start()
    manifest = builder.manifest("hello").json()
    builder.stop()
    nix_log = work_dir / "nix-invocations"
    nix_log.write_text("")
    fake = work_dir / "fake-nix"
    fake.write_text(FAKE_NIX.format(log=nix_log))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=data_dir, work_dir=work_dir / "fake", log_level="INFO",
                         extra_args=["--nix", str(fake), "--refresh-interval", "86400",
                                     "--max-client-connections", "512"]).start()
    layer = manifest["layers"][0]
    facts = {"layer": layer["digest"], "size": layer["size"], "config": manifest["config"]["digest"]}
    assert forge.get("/v2/hello/manifests/latest").status == 200
    assert nix_calls(nix_log) == 0, "a stored, fresh image must be served without Nix"
    yield forge, nix_log, facts
    forge.stop()
    report = os.environ.get("NIXFORGE_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps({"cases": dict(CASES), "total": sum(CASES.values()),
                                            "statuses": {str(k): v for k, v in sorted(STATUSES.items())},
                                            "nix_invocations": len(nix_log.read_text().splitlines())}, indent=1))


@pytest.fixture(scope="module")
def wire(hostile: tuple[ForgeProcess, Path, dict]) -> Iterator[Wire]:
    client = Wire(hostile[0].port)  # type: ignore[arg-type]
    yield client
    client.close()


def nix_calls(log: Path) -> int:
    """Nix invocations requests caused: every one but the readiness check's periodic `nix --version`
    (a timer's, never a request's: /readyz answers its cached result)."""
    return len([line for line in log.read_text().splitlines() if line != "--version"])


def ask(wire: Wire, log: Path, category: str, raw: bytes, invalid: bool, head_only: bool = False) -> Answer:
    """Send one case; check the invariants every answer must keep; return the answer."""
    before = nix_calls(log)
    answer = wire.exchange(raw, head_only=head_only)
    CASES[category] += 1
    STATUSES[answer.status] += 1
    assert answer.status < 500, (answer.status, raw[:300], answer.body[:300])
    assert answer.headers.get("docker-distribution-api-version") == "registry/2.0", answer.headers
    if answer.status >= 400 and not head_only:
        assert answer.error_code() in KNOWN_CODES
    elif answer.status >= 400:
        assert answer.headers.get("content-type") == "application/json"
    if invalid:
        assert nix_calls(log) == before, f"Nix ran for invalid input {raw[:300]!r}"
    return answer


def get(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: registry.test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def valid_name(name: str) -> bool:
    return 0 < len(name) <= 255 and NAME_PATTERN.fullmatch(name) is not None


NAME_ALPHABET = st.sampled_from([*"abcehlo09._-/", "__", "--", "A", "%", "?", "#", " ", "\x00", "é", "日", ":", "@",
                                 "\\", "+", "~", "\t", "\x7f"])
# Mostly names the grammar refuses; a valid one costs a (fake) Nix lock and probe, so fewer of those.
names = st.one_of(
    st.lists(NAME_ALPHABET, max_size=40).map("".join),
    st.lists(NAME_ALPHABET, min_size=2, max_size=300).map("".join),
    st.text(max_size=60),
    st.from_regex(NAME_PATTERN, fullmatch=True).filter(lambda name: len(name) < 300),
    st.sampled_from(["hello", "packages/hello", "applications/a/b", "x" * 256, "a/" * 130 + "b", "Hello"]),
)


@fuzz(1500)
@given(name=names)
def test_names(hostile: tuple, wire: Wire, name: str) -> None:
    """A random repository name in a manifest path: 400 NAME_INVALID unless the spec's grammar allows it."""
    _, log, _ = hostile
    valid = valid_name(name)
    answer = ask(wire, log, "names", get(f"/v2/{quote(name, safe='/')}/manifests/latest"), invalid=not valid)
    if valid:
        assert answer.status in (200, 404)
        if answer.status == 404:
            assert answer.error_code() in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")
    elif name and not name.startswith("/") and "manifests" not in name:
        assert (answer.status, answer.error_code()) == (400, "NAME_INVALID"), name


TAG_ALPHABET = st.sampled_from([*"aAzZ09._-", ":", "%", "/", " ", "é", "\x00", "sha256:", "latest", "f" * 16])


@fuzz(1500)
@given(tag=st.one_of(st.lists(TAG_ALPHABET, max_size=30).map("".join), st.from_regex(TAG_PATTERN, fullmatch=True),
                     st.text(max_size=200)))
def test_tags(hostile: tuple, wire: Wire, tag: str) -> None:
    """A random tag (or digest) of hello: DIGEST_INVALID (400) for a malformed digest, MANIFEST_UNKNOWN (404)
    for a reference that is no valid tag (as the conformance suite wants), else served or unknown."""
    _, log, _ = hostile
    if not tag or "/" in tag:
        tag = tag.replace("/", "") or "x"
    if ":" in tag:
        match = DIGEST_PATTERN.fullmatch(tag)
        valid = match is not None and len(match.group(2)) == {"sha256": 64, "sha512": 128}[match.group(1)]
        expected = None if valid else (400, "DIGEST_INVALID")
    else:
        valid = len(tag) <= 128 and TAG_PATTERN.fullmatch(tag) is not None
        expected = None if valid else (404, "MANIFEST_UNKNOWN")
    answer = ask(wire, log, "tags", get(f"/v2/hello/manifests/{quote(tag, safe='')}"), invalid=not valid)
    if expected is not None:
        assert (answer.status, answer.error_code()) == expected, tag
    else:
        assert answer.status in (200, 404)


@fuzz(1500)
@given(data=st.data(), method=st.sampled_from(["GET", "HEAD"]), kind=st.sampled_from(["blobs", "manifests"]))
def test_digests(hostile: tuple, wire: Wire, data: st.DataObject, method: str, kind: str) -> None:
    """Random digests of blobs and manifests: DIGEST_INVALID when malformed, BLOB/MANIFEST_UNKNOWN when absent."""
    _, log, facts = hostile
    digest = data.draw(st.one_of(
        st.builds(lambda h: "sha256:" + h, st.text("0123456789abcdef", min_size=64, max_size=64)),
        st.builds(lambda a, h: f"{a}:{h}", st.sampled_from(["sha256", "sha512", "md5", "SHA256", ""]),
                  st.text("0123456789abcdefABCDEFg", max_size=140)),
        st.sampled_from([facts["layer"], facts["config"], facts["layer"].upper(), facts["layer"] + "0"]),
    ))
    match = DIGEST_PATTERN.fullmatch(digest)
    valid = match is not None and len(match.group(2)) == {"sha256": 64, "sha512": 128}[match.group(1)]
    answer = ask(wire, log, "digests", get(f"/v2/hello/{kind}/{quote(digest, safe=':')}", method),
                 invalid=True, head_only=method == "HEAD")
    if not valid:
        assert answer.status == 400 and (method == "HEAD" or answer.error_code() == "DIGEST_INVALID"), digest
    elif kind == "blobs" and digest in (facts["layer"], facts["config"]):
        assert answer.status == 200
    else:
        assert answer.status in (200, 404)


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)


@fuzz(800)
@given(accept=st.one_of(header_text, st.lists(st.sampled_from([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
    "*/*", ";q=0", ";q=0.5", ";q=1.0001", ";q=abc", ",", ";", "=", "application/json", " ", "q=9" * 3]),
    max_size=12).map("".join)))
def test_accept(hostile: tuple, wire: Wire, accept: str) -> None:
    """Any Accept header: the stored manifest is served (OCI unless Docker is preferred), never an error."""
    _, log, _ = hostile
    answer = ask(wire, log, "accept", get("/v2/hello/manifests/latest", headers={"Accept": accept.strip()}),
                 invalid=True)
    assert answer.status == 200, (accept, answer.body[:200])
    assert answer.headers["content-type"] in ("application/vnd.oci.image.manifest.v1+json",
                                              "application/vnd.docker.distribution.manifest.v2+json")


range_text = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", st.one_of(st.integers(0, 10**6).map(str), st.just(""),
                                                        st.just("9" * 5000), st.just("0" * 300 + "1")),
              st.one_of(st.integers(0, 10**7).map(str), st.just(""), st.just("9" * 5000))),
    st.lists(st.sampled_from(["bytes", "=", "-", ",", "0", "1", "9" * 40, " ", "items", "٣", "+"]), max_size=10)
    .map("".join),
)


@fuzz(800)
@given(byte_range=range_text)
def test_ranges(hostile: tuple, wire: Wire, byte_range: str) -> None:
    """Any Range on a real layer: 200, a 206 whose body matches its Content-Range, or 416 with `bytes */size`."""
    _, log, facts = hostile
    answer = ask(wire, log, "ranges", get(f"/v2/hello/blobs/{facts['layer']}", headers={"Range": byte_range}),
                 invalid=True)
    assert answer.status in (200, 206, 416), (byte_range, answer.status)
    if answer.status == 206:
        first, last, size = map(int, re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", answer.headers["content-range"]).groups())
        assert size == facts["size"] and len(answer.body) == last - first + 1
    elif answer.status == 416:
        assert answer.headers["content-range"] == f"bytes */{facts['size']}"
        assert answer.error_code() == "RANGE_INVALID"
    else:
        assert len(answer.body) == facts["size"]


@fuzz(800)
@given(path=st.sampled_from(["/v2/_catalog", "/v2/hello/tags/list"]),
       n=st.one_of(st.none(), st.integers(-5, 10**6).map(str), st.text(max_size=20), st.just("9" * 5000),
                   st.just("0" * 5000 + "2")),
       last=st.one_of(st.none(), st.text(max_size=40)))
def test_pagination(hostile: tuple, wire: Wire, path: str, n: str | None, last: str | None) -> None:
    """Any `n` and `last`: a page, or 400 PAGINATION_NUMBER_INVALID for an `n` that is not a small number."""
    _, log, _ = hostile
    query = "&".join(f"{key}={quote(value, safe='')}" for key, value in (("n", n), ("last", last)) if value is not None)
    good_n = good_page_number(n)
    # A valid listing of _catalog may evaluate the flake's catalog (one Nix run per revision).
    answer = ask(wire, log, "pagination", get(f"{path}?{query}" if query else path),
                 invalid=not (good_n and path == "/v2/_catalog"))
    if good_n:
        assert answer.status == 200, (n, last, answer.body[:200])
        listing = json.loads(answer.body)
        entries = listing.get("repositories", listing.get("tags"))
        assert entries == sorted(entries)
    else:
        assert (answer.status, answer.error_code()) == (400, "PAGINATION_NUMBER_INVALID"), n


TCHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"
TOKEN = st.text(TCHARS, min_size=1, max_size=20)


def good_page_number(n: str | None) -> bool:
    """Whether `n` is a page size the registry takes (absent, empty, or at most 18 significant digits)."""
    return n is None or n == "" or (n.isascii() and n.isdigit() and len(n.lstrip("0")) <= 18)


@fuzz(900)
@given(method=st.one_of(st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE",
                                          "CONNECT", "PROPFIND", "get"]), TOKEN),
       path=st.sampled_from(["/v2/", "/v2/hello/manifests/latest", "/v2/hello/blobs/uploads/", "/v2/_catalog",
                             "/v2/hello/tags/list", "/", "/nothing", "*"]))
def test_methods(hostile: tuple, wire: Wire, method: str, path: str) -> None:
    """Every method but GET and HEAD gets 405 UNSUPPORTED with `Allow: GET, HEAD`."""
    _, log, _ = hostile
    answer = ask(wire, log, "methods", get(path, method), invalid=method not in ("GET", "HEAD"),
                 head_only=method == "HEAD")
    if method not in ("GET", "HEAD"):
        assert answer.status == 405 and answer.headers.get("allow") == "GET, HEAD", (method, path, answer.status)
        assert answer.error_code() == "UNSUPPORTED"


@fuzz(1000)
@given(line=st.one_of(st.binary(max_size=200), st.lists(st.sampled_from(
    [b"GET", b" ", b"/v2/", b"HTTP/1.1", b"HTTP/2", b"HTTP/1.0", b"\t", b"\x00", b"\xff", b"http://h/", b"?", b"%",
     b"*", b"/v2/hello/manifests/latest", b"PUT"]), max_size=8).map(b"".join)))
def test_malformed_request_lines(hostile: tuple, wire: Wire, line: bytes) -> None:
    """Any request line: a JSON answer (400 when malformed), never a bare close, never Nix."""
    _, log, _ = hostile
    line = line.replace(b"\r", b"").replace(b"\n", b"")
    ask(wire, log, "request_lines", line + b"\r\nHost: r\r\n\r\n", invalid=True)
    wire.close()  # a malformed line may leave the parser anywhere: start the next case afresh


@fuzz(400)
@given(size=st.integers(1, 40000), count=st.integers(1, 300), name=st.sampled_from(["X-Big", "Accept", "Cookie"]))
def test_huge_headers(hostile: tuple, wire: Wire, size: int, count: int, name: str) -> None:
    """Big header blocks: served while under 16 KiB and 100 fields, else 431 JSON (never a silent close)."""
    _, log, _ = hostile
    value = "a" * max(1, size // count)
    raw = ("GET /v2/ HTTP/1.1\r\nHost: r\r\n" + f"{name}: {value}\r\n" * count + "\r\n").encode()
    answer = ask(wire, log, "huge_headers", raw, invalid=True)
    assert answer.status in (200, 431), (size, count, answer.status)
    if len(raw) > 16 * 1024 + 200 or count > 100:
        assert answer.status == 431
    if len(raw) < 15 * 1024 and count < 99:
        assert answer.status == 200


PERCENT = st.one_of(st.integers(0, 255).map(lambda byte: f"%{byte:02x}"),
                    st.integers(0, 255).map(lambda byte: f"%{byte:02X}"),
                    st.sampled_from(["%", "%g1", "%2", "%%", "a", "h", "e", "l", "o", "/", "%2F", "%00", "%C3%A9",
                                     "%E6%97%A5", "%ff%fe"]))


@fuzz(800)
@given(parts=st.lists(PERCENT, min_size=1, max_size=20), where=st.sampled_from(["name", "reference", "query"]))
def test_percent_encoding(hostile: tuple, wire: Wire, parts: list[str], where: str) -> None:
    """Percent-encoded (and broken) sequences in names, references and queries: JSON 4xx, no Nix for invalid."""
    _, log, _ = hostile
    encoded = "".join(parts)
    decoded = unquote_to_bytes(encoded)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    path = {"name": f"/v2/{encoded}/manifests/latest", "reference": f"/v2/hello/manifests/{encoded}",
            "query": f"/v2/_catalog?n={encoded}&last={encoded}"}[where]
    maybe_valid = text is not None and {"name": valid_name, "reference": lambda _: True,
                                         "query": good_page_number}[where](text)
    answer = ask(wire, log, "percent_encoding", get(path), invalid=not maybe_valid)
    if text is None and where != "query":
        assert (answer.status, answer.error_code()) == (400, "NAME_INVALID")


@fuzz(800)
@given(raw=st.binary(min_size=1, max_size=60).filter(lambda b: any(byte == 0 or byte >= 0x80 for byte in b)),
       where=st.sampled_from(["path", "header", "name"]))
def test_nul_and_non_ascii(hostile: tuple, wire: Wire, raw: bytes, where: str) -> None:
    """NUL and bytes over 0x7f, raw in the request line or a header: a JSON 400 (or the page), never Nix."""
    _, log, _ = hostile
    clean = raw.replace(b"\r", b"").replace(b"\n", b"")
    if where == "path":
        request = b"GET /v2/" + clean.replace(b" ", b"") + b"/manifests/latest HTTP/1.1\r\nHost: r\r\n\r\n"
    elif where == "header":
        request = b"GET /v2/ HTTP/1.1\r\nHost: r\r\nX-Junk: " + clean + b"\r\n\r\n"
    else:
        request = b"GET /v2/" + quote(clean, safe="").encode() + b"/tags/list HTTP/1.1\r\nHost: r\r\n\r\n"
    answer = ask(wire, log, "nul_non_ascii", request, invalid=True)
    if where == "header":
        assert answer.status == (400 if b"\x00" in clean else 200), (clean, answer.status)
    elif where == "path" and not {ord("?"), ord("#")} & set(clean):
        assert answer.status == 400
    elif where == "path":
        assert answer.status in (200, 400)  # after `?` it is a query: /v2/ itself may answer
    else:
        assert answer.status in (400, 404)
    if answer.status == 400 and where != "header":
        wire.close()


LABEL = st.text("abcxyz019-", min_size=1, max_size=12)
HOST_NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
PORT = st.one_of(st.just(""), st.integers(0, 65535).map(lambda port: f":{port}"))
# Host values by kind; each kind's expected status (None: either is right, e.g. random text).
HOSTS = {
    "name": (st.tuples(HOST_NAME, PORT).map("".join), 200),
    "ipv4": (st.tuples(st.ip_addresses(v=4).map(str), PORT).map("".join), 200),
    "ipv6": (st.tuples(st.ip_addresses(v=6).map(lambda a: f"[{a}]"), PORT).map("".join), 200),
    "empty": (st.just(""), 200),
    "dot_first": (HOST_NAME.map(lambda name: "." + name), 400),
    "empty_label": (st.tuples(HOST_NAME, HOST_NAME).map("..".join), 400),
    "spaces": (st.tuples(HOST_NAME, st.sampled_from([" ", "  ", "\t", " \t"]), HOST_NAME).map("".join), 400),
    "over_long": (st.integers(64, 3000).map(lambda size: "a" * size), 400),
    "non_ascii": (st.tuples(HOST_NAME, st.text(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),
                                               min_size=1, max_size=5)).map("".join), 400),
    "bad_ipv6": (st.sampled_from(["[::1", "::1", "[zz::1]", "[::1]x", "[1:2:3:4:5:6:7:8:9]", "[]"]), 400),
    "text": (st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40), None),
}


@fuzz(600)
@given(data=st.data(), kind=st.sampled_from([*HOSTS, "missing", "repeated"]),
       path=st.sampled_from(["/v2/", "/v2/hello/manifests/latest", "/v2/hello/tags/list", "/"]))
def test_host_headers(hostile: tuple, wire: Wire, data: st.DataObject, kind: str, path: str) -> None:
    """Any Host header (missing, repeated, empty, spaced, dot first, over-long, non-ASCII, an IPv6 literal):
    never a 5xx, JSON under /v2/, a 400 for a malformed one, the page for a valid one, and never Nix."""
    _, log, _ = hostile
    if kind == "missing":
        hosts, expected = [], 400
    elif kind == "repeated":
        hosts, expected = [data.draw(HOST_NAME), data.draw(HOST_NAME)], 400
    else:
        strategy, expected = HOSTS[kind]
        hosts = [data.draw(strategy)]
    lines = [f"GET {path} HTTP/1.1".encode()] + [b"Host: " + host.encode("utf-8") for host in hosts]
    answer = ask(wire, log, "hosts", b"\r\n".join(lines) + b"\r\n\r\n", invalid=True)
    if path.startswith("/v2/"):
        assert answer.headers.get("content-type", "").endswith("json"), (hosts, answer.status, answer.body[:200])
    if expected is not None and path != "/":
        assert answer.status == expected, (kind, hosts, answer.status, answer.body[:200])
    if expected == 400:
        assert (answer.status, answer.error_code()) == (400, "UNSUPPORTED"), (kind, hosts)


MIB = 1024 * 1024


def test_a_remembered_answer_repeated_keeps_rss_flat(hostile: tuple, wire: Wire) -> None:
    """Thousands of one remembered NAME_UNKNOWN (a made-up name, answered from memory, no Nix run)
    leave RSS flat: each answer is a fresh error, no traceback grows (it grew ~14 KiB a request)."""
    forge, log, _ = hostile
    request = get("/v2/zz-made-up/manifests/latest")
    first = ask(wire, log, "repetition", request, invalid=False)
    assert (first.status, first.error_code()) == (404, "NAME_UNKNOWN")
    calls = nix_calls(log)

    def burst(count: int) -> None:
        for _ in range(count):
            answer = wire.exchange(request)
            assert (answer.status, answer.body) == (first.status, first.body)
        CASES["repetition"] += count
        STATUSES[404] += count

    burst(300)  # allocator and buffers settle
    before = vm_rss(forge.pid)
    burst(3000)
    grown = vm_rss(forge.pid) - before
    assert nix_calls(log) == calls, "a remembered answer must run no Nix"
    assert grown < 10 * MIB, f"RSS grew {grown / MIB:.1f} MiB over 3,000 remembered answers"


def test_every_case_was_answered_and_at_least_10000_ran(hostile: tuple) -> None:
    """The totals, after the property tests above (so run the whole module): at least 10,000 cases, no 5xx."""
    assert len(CASES) == 13, f"run the whole module: only {sorted(CASES)} ran"
    total = sum(CASES.values())
    print(f"\nhostile cases: {total} {dict(CASES)}; statuses {dict(sorted(STATUSES.items()))}")
    assert total >= 10_000
    assert all(status < 500 for status in STATUSES)
