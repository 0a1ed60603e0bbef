"""`n`/`last` pagination of tag and repository lists, with the `Link: <…>; rel="next"` header."""

from __future__ import annotations

from urllib.parse import urlencode

from attrs import frozen

from nixforge.api.errors import HttpError
from nixforge.api.numbers import SATURATED, is_decimal, saturating_decimal


@frozen
class PageRequest:
    """The client's `n` (page size, None for everything) and `last` (return entries after it)."""

    n: int | None = None
    last: str | None = None


@frozen
class Page:
    """One page of entries; `next_last` is the `last` value of the following page, if any."""

    entries: list[str]
    next_last: str | None


def _first(args: dict[bytes, list[bytes]], key: bytes) -> str | None:
    values = args.get(key)
    if not values:
        return None
    return values[0].decode("utf-8", errors="replace")


def parse_page_request(args: dict[bytes, list[bytes]]) -> PageRequest:
    """Read `n` and `last` from Twisted's `request.args`; a bad `n` → PAGINATION_NUMBER_INVALID."""
    n_text = _first(args, b"n")
    last = _first(args, b"last") or None
    if n_text is None or n_text == "":
        return PageRequest(None, last)
    n = saturating_decimal(n_text) if is_decimal(n_text) else None
    if n is None or n >= SATURATED:
        raise HttpError(
            "PAGINATION_NUMBER_INVALID",
            "invalid number of results requested",
            {"n": n_text[:50]},
        )
    return PageRequest(n, last)


def paginate(entries: list[str], request: PageRequest) -> Page:
    """Return the sorted entries after `last`, at most `n` of them."""
    remaining = sorted(entries)
    if request.last is not None:
        remaining = [entry for entry in remaining if entry > request.last]
    if request.n is None or len(remaining) <= request.n:
        return Page(remaining, None)
    page = remaining[: request.n]
    return Page(page, page[-1] if page else None)


def next_link(path: str, n: int, last: str) -> str:
    """Return the `Link` header value pointing at the next page."""
    return f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'
