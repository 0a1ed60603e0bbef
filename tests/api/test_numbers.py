"""Numbers from clients are read without int() on unbounded text: n, Range offsets, Content-Length."""

from __future__ import annotations

import pytest

from nixforge.api.blob_sender import ByteRange, parse_range
from nixforge.api.errors import HttpError
from nixforge.api.numbers import SATURATED, is_decimal, saturating_decimal
from nixforge.api.pagination import PageRequest, parse_page_request

HUGE = "9" * 5000  # int() refuses this many digits (Python's 4,300-digit limit)


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("7", 7), ("0" * 6000 + "7", 7), ("999999999999999999", 999999999999999999), (HUGE, SATURATED),
    (b"0" * 5000, 0), (b"12", 12),
])
def test_saturating_decimal(text: str | bytes, value: int) -> None:
    assert saturating_decimal(text) == value


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1.0", "١٢", "²", b"", b"1 "])
def test_only_ascii_digits_are_decimal(text: str | bytes) -> None:
    assert not is_decimal(text)
    with pytest.raises(ValueError):
        saturating_decimal(text)


def test_a_huge_page_size_is_a_400_not_a_500() -> None:
    with pytest.raises(HttpError) as caught:
        parse_page_request({b"n": [HUGE.encode()]})
    assert (caught.value.response.status, caught.value.response.code) == (400, "PAGINATION_NUMBER_INVALID")
    assert parse_page_request({b"n": [b"000000000000000000000000005"]}) == PageRequest(5, None)


def test_a_huge_first_byte_is_unsatisfiable() -> None:
    with pytest.raises(HttpError) as caught:
        parse_range(f"bytes={HUGE}-", 100)
    assert caught.value.response.status == 416
    assert caught.value.response.headers["Content-Range"] == "bytes */100"


def test_a_huge_last_byte_or_suffix_means_the_end() -> None:
    assert parse_range(f"bytes=10-{HUGE}", 100) == ByteRange(10, 99, 100)
    assert parse_range(f"bytes=-{HUGE}", 100) == ByteRange(0, 99, 100)
