"""Read the decimal numbers clients send (`n`, `Range`, `Content-Length`) without converting unbounded text."""

from __future__ import annotations

MAX_DIGITS = 18
# Larger than any blob size, page size or body length nixforge can meet; what longer numbers read as.
SATURATED = 10**MAX_DIGITS


def is_decimal(text: str | bytes) -> bool:
    """True for a non-empty run of ASCII digits (no sign, no spaces, no Unicode digits)."""
    if isinstance(text, bytes):
        return bool(text) and text.isdigit()
    return bool(text) and text.isascii() and text.isdigit()


def saturating_decimal(text: str | bytes) -> int:
    """The value of ASCII digits `text`, capped at SATURATED; int() only ever sees at most 18 digits.

    Leading zeros are not significant: `000…0007` is 7 however many zeros come first.
    Raises ValueError unless `is_decimal(text)`.
    """
    if not is_decimal(text):
        raise ValueError("not a decimal number")
    zero = b"0" if isinstance(text, bytes) else "0"
    significant = text.lstrip(zero) or zero
    if len(significant) > MAX_DIGITS:
        return SATURATED
    return int(significant)
