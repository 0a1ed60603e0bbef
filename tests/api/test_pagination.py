"""Unit tests of n/last parsing, paging and the Link header."""

from __future__ import annotations

import pytest

from nixforge.api.errors import HttpError
from nixforge.api.pagination import Page, PageRequest, next_link, paginate, parse_page_request


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, PageRequest(None, None)),
        ({b"n": [b"3"]}, PageRequest(3, None)),
        ({b"n": [b"0"], b"last": [b"b"]}, PageRequest(0, "b")),
        ({b"n": [b""], b"last": [b""]}, PageRequest(None, None)),
        ({b"n": [b"2", b"9"]}, PageRequest(2, None)),
        ({b"last": [b"a/b"]}, PageRequest(None, "a/b")),
    ],
)
def test_parse_page_request(args: dict[bytes, list[bytes]], expected: PageRequest) -> None:
    assert parse_page_request(args) == expected


@pytest.mark.parametrize("n", [b"-1", b"x", b"1e3", b"+2", b" 2", "\u0663".encode(), b"\xff"])
def test_bad_n(n: bytes) -> None:
    with pytest.raises(HttpError) as raised:
        parse_page_request({b"n": [n]})
    assert raised.value.response.code == "PAGINATION_NUMBER_INVALID"
    assert raised.value.response.status == 400


ENTRIES = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (PageRequest(), Page(ENTRIES, None)),
        (PageRequest(2), Page(["a", "b"], "b")),
        (PageRequest(4), Page(ENTRIES, None)),
        (PageRequest(10), Page(ENTRIES, None)),
        (PageRequest(2, "b"), Page(["c", "d"], None)),
        (PageRequest(1, "b"), Page(["c"], "c")),
        (PageRequest(None, "bb"), Page(["c", "d"], None)),
        (PageRequest(None, "z"), Page([], None)),
        (PageRequest(0), Page([], None)),
    ],
)
def test_paginate(request_: PageRequest, expected: Page) -> None:
    assert paginate(ENTRIES, request_) == expected


def test_paginate_sorts() -> None:
    assert paginate(["c", "a", "b"], PageRequest(2)) == Page(["a", "b"], "b")


def test_next_link() -> None:
    assert next_link("/v2/x/y/tags/list", 5, "v1.0") == '</v2/x/y/tags/list?n=5&last=v1.0>; rel="next"'
    assert next_link("/v2/_catalog", 1, "a/b c") == '</v2/_catalog?n=1&last=a%2Fb+c>; rel="next"'
