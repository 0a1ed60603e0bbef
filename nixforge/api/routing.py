"""werkzeug converters for the typed parts of registry paths: repository names and digests."""

from __future__ import annotations

from werkzeug.routing import BaseConverter

from nixforge.references import DIGEST_PATTERN, NAME_PATTERN


class RepositoryNameConverter(BaseConverter):
    """A repository name of the distribution grammar (components joined by slashes)."""

    regex = NAME_PATTERN.pattern
    part_isolating = False
    weight = 150


class AnyNameConverter(BaseConverter):
    """Whatever stands where a name should (slashes and line breaks too), so the route can
    answer NAME_INVALID for it rather than a plain 404; it loses to `repository`."""

    regex = r"(?s:.+?)"
    part_isolating = False
    weight = 300


class DigestConverter(BaseConverter):
    """A digest of the form `algorithm:hex` (its length is checked by parse_digest)."""

    regex = DIGEST_PATTERN.pattern
    weight = 150


class AnySegmentConverter(BaseConverter):
    """Any one path segment (line breaks too), where a malformed digest must still reach its check."""

    regex = r"(?s:[^/]+)"
    weight = 300


CONVERTERS: dict[str, type[BaseConverter]] = {
    "repository": RepositoryNameConverter,
    "anyname": AnyNameConverter,
    "digest": DigestConverter,
    "segment": AnySegmentConverter,
}
