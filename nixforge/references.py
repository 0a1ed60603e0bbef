"""Parsing and validation of repository names, tags and digests (distribution spec grammar)."""

from __future__ import annotations

import re

from attrs import frozen

from nixforge.errors import DigestInvalid, ManifestUnknown, NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_PATTERN = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DIGEST_HEX = {"sha256": 64, "sha512": 128}
DIGEST_PATTERN = re.compile(r"(sha256|sha512):([a-f0-9]+)")
MAX_NAME_LENGTH = 255
"""Longest repository name accepted by default (MAX_IMAGE_NAME_LENGTH)."""
MAX_TAG_LENGTH = 128
"""Longest tag accepted by default (MAX_TAG_LENGTH): the spec's grammar allows no longer."""


@frozen
class Tag:
    """A validated tag, such as `latest` or a git ref."""

    value: str

    def __str__(self) -> str:
        return self.value


@frozen
class Digest:
    """A validated content digest, `algorithm:hex`."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def validate_name(name: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Return `name` if it is a valid repository name, else raise NameInvalid."""
    if not name or len(name) > max_length:
        raise NameInvalid(
            "invalid repository name",
            {"name": name[:max_length + 1], "max_length": max_length},
        )
    if not NAME_PATTERN.fullmatch(name):
        raise NameInvalid("invalid repository name", {"name": name})
    return name


def validate_tag(tag: str, max_length: int = MAX_TAG_LENGTH) -> Tag:
    """Return the Tag for `tag`, or raise TagInvalid."""
    if len(tag) > max_length or not TAG_PATTERN.fullmatch(tag):
        raise TagInvalid("invalid tag", {"tag": tag[:max_length + 1], "max_length": max_length})
    return Tag(tag)


def parse_digest(text: str) -> Digest:
    """Return the Digest for `text` (sha256 or sha512), or raise DigestInvalid."""
    match = DIGEST_PATTERN.fullmatch(text)
    if match is None or len(match.group(2)) != _DIGEST_HEX[match.group(1)]:
        raise DigestInvalid("invalid digest", {"digest": text[:200]})
    return Digest(match.group(1), match.group(2))


def parse_reference(text: str, max_tag_length: int = MAX_TAG_LENGTH) -> Tag | Digest:
    """Parse a manifest reference: a digest if it has a colon, otherwise a tag.

    A malformed digest is DigestInvalid (400). Any other reference that is no valid tag names no
    manifest there can be: ManifestUnknown (404), as the conformance suite expects, saying why.
    """
    if ":" in text:
        return parse_digest(text)
    try:
        return validate_tag(text, max_tag_length)
    except TagInvalid:
        raise ManifestUnknown(
            "manifest unknown: the reference is neither a valid tag nor a digest",
            {"reference": text[:max_tag_length + 1],
             "reason": f"a tag matches {TAG_PATTERN.pattern} and has at most {max_tag_length} characters; "
                       "a digest is algorithm:hex"},
        ) from None


COMMIT_TAG_MODES = ("known", "any", "none")
"""Which 40-hex commit tags are served (NIXFORGE_COMMIT_TAGS): known revisions, any, or none."""
