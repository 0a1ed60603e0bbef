"""Name, tag and digest validation follows the distribution spec grammar and the length limits."""

import pytest

from nixforge.errors import DigestInvalid, NameInvalid, TagInvalid
from nixforge.references import Digest, Tag, parse_digest, parse_reference, validate_name, validate_tag

VALID_NAMES = ["hello", "packages/hello", "applications/app/web", "a.b_c__d-e--f", "x/y/z/w", "0"]
INVALID_NAMES = ["", "Hello", "-hello", "hello-", "a..b", "a/../b", "../etc", "a//b", "/a", "a/", "a___b",
                 "a b", "a;rm -rf /", "a$(id)", "ä", "a\nb", "a#b", "a?b"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        validate_name(name)


def test_name_length_limit() -> None:
    assert validate_name("a" * 20, max_length=20)
    with pytest.raises(NameInvalid):
        validate_name("a" * 21, max_length=20)


@pytest.mark.parametrize("tag", ["latest", "v1.0", "_x", "A-b.c_d", "0" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == Tag(tag)


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a/b", "a:b", "a b", "a$b", "0" * 129, "ä"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(TagInvalid):
        validate_tag(tag)


def test_tag_length_limit_is_configurable() -> None:
    with pytest.raises(TagInvalid):
        validate_tag("a" * 11, max_length=10)


def test_digests() -> None:
    assert parse_digest("sha256:" + "a" * 64) == Digest("sha256", "a" * 64)
    assert str(parse_digest("sha512:" + "0" * 128)) == "sha512:" + "0" * 128
    for bad in ["sha256:" + "a" * 63, "sha256:" + "A" * 64, "md5:abc", "sha256:", "sha256:../../x",
                "sha512:" + "0" * 64]:
        with pytest.raises(DigestInvalid):
            parse_digest(bad)


def test_reference_is_a_digest_when_it_has_a_colon() -> None:
    assert isinstance(parse_reference("latest"), Tag)
    assert isinstance(parse_reference("sha256:" + "b" * 64), Digest)
    with pytest.raises(DigestInvalid):
        parse_reference("foo:bar")
