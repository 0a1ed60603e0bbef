"""Scrub what a client must not learn from text: URL credentials and query strings, host paths, OSError text."""

from __future__ import annotations

import re

STORE_DIR = "/nix/store/"
REGISTRY_PATHS = "/-/"  # the registry's own URLs (e.g. a build's log), not the host's files
HOST_PATH = "<host path>"
CREDENTIALS = "<credentials>"

# A URL with an authority (`scheme://[userinfo@]host/path?query#fragment`), a flake-style ref with a
# query (`github:o/r?dir=x`), or an absolute path that is not part of a URL (nor of a relative path).
_TOKEN = re.compile(
    r"(?P<url>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*)"
    r"|(?P<query_ref>\b[A-Za-z][A-Za-z0-9+.-]*:[^\s'\"<>`/?#][^\s'\"<>`?#]*\?[^\s'\"<>`#]*)"
    r"|(?P<path>(?<![\w.~/-])/[^\s'\"<>`:,;#()\[\]{}]*)"
)
_USERINFO = re.compile(r"^(?P<scheme>[^:]+://)(?P<userinfo>[^/@?#]*@)")
# `[Errno 2] No such file or directory: '/srv/x'` → `[Errno 2] No such file or directory`.
_OS_ERROR = re.compile(r"(\[Errno \d+\] [^:'\"\n]*)(?::\s*'[^'\n]*'(?:\s*->\s*'[^'\n]*')?)+")


def _strip_query(text: str) -> str:
    """Drop the query string and fragment of a URL or flake ref (tokens ride there)."""
    for separator in ("?", "#"):
        text = text.split(separator, 1)[0]
    return text


def _store_path(path: str) -> bool:
    """True for a path inside the Nix store (world-readable anyway), with no `..` leading out of it."""
    return path.startswith(STORE_DIR) and "/.." not in path


def _registry_path(path: str) -> bool:
    """True for a path of the registry's own URLs under `/-/`, with no `..`."""
    return path.startswith(REGISTRY_PATHS) and "/.." not in path


def _scrub_token(match: re.Match[str]) -> str:
    if match.group("url") is not None:
        url = _USERINFO.sub(lambda m: m.group("scheme") + CREDENTIALS + "@", match.group("url"))
        scheme, _, rest = url.partition("://")
        if scheme.endswith("file"):
            return url if _store_path(_strip_query(rest)) else f"{scheme}://{HOST_PATH}"
        return _strip_query(url)
    if match.group("query_ref") is not None:
        return _strip_query(match.group("query_ref"))
    path = match.group("path")
    return path if _store_path(path) or _registry_path(path) else HOST_PATH


def redact(text: str) -> str:
    """Return `text` without URL credentials, query strings, host paths outside /nix/store, OSError paths."""
    text = _OS_ERROR.sub(lambda m: m.group(1).rstrip(), text)
    return _TOKEN.sub(_scrub_token, text)


def redact_flake_ref(flake_ref: str) -> str:
    """A flake ref fit to show anyone: no credentials, no query string, no host path (`path:<host path>`)."""
    return redact(flake_ref)


def redact_value(value: object) -> object:
    """Redact every string inside a JSON-like value (dicts, lists, tuples), keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(key)): redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))
