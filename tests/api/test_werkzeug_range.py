"""Why the blob Range parser stays hand-written: werkzeug's parse_range_header gets these cases wrong for us."""

from __future__ import annotations

import pytest
from werkzeug.http import parse_range_header

from nixforge.api.blob_sender import parse_range
from nixforge.api.errors import HttpError


def test_an_empty_suffix_range_is_unsatisfiable_not_ignored() -> None:
    """RFC 9110 14.1.1: `bytes=-0` can't be satisfied (416); werkzeug drops it (the whole blob, 200)."""
    assert parse_range_header("bytes=-0") is None
    with pytest.raises(HttpError) as raised:
        parse_range("bytes=-0", 100)
    assert raised.value.response.status == 416

