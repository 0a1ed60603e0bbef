"""Accept header negotiation (media ranges with q-values) between the OCI and Docker manifest forms."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from attrs import frozen

from nixforge.oci.documents import ImageManifests, ManifestDocument


@frozen
class MediaRange:
    """One media range of an Accept header: `type/subtype` (either may be `*`) and its q-value."""

    type: str
    subtype: str
    quality: float

    def specificity(self, media_type: str) -> int:
        """Return how specifically this range matches `media_type` (2, 1, 0), or -1 if it does not."""
        main, _, sub = media_type.lower().partition("/")
        if self.type == "*":
            return 0 if self.subtype == "*" else -1
        if self.type != main:
            return -1
        if self.subtype == "*":
            return 1
        return 2 if self.subtype == sub else -1


def _parse_quality(text: str) -> float | None:
    """Parse a qvalue (`0` to `1`, three decimals at most); None if malformed."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not 0.0 <= value <= 1.0:
        return None
    return value


def parse_accept(headers: Iterable[str]) -> list[MediaRange]:
    """Parse every Accept header value into media ranges; malformed entries are skipped."""
    ranges: list[MediaRange] = []
    for header in headers:
        for entry in header.split(","):
            parts = [part.strip() for part in entry.split(";")]
            media = parts[0].lower()
            if not media:
                continue
            if media == "*":
                media = "*/*"
            main, slash, sub = media.partition("/")
            if not slash or not main or not sub or (main == "*" and sub != "*"):
                continue
            quality: float | None = 1.0
            for param in parts[1:]:
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    quality = _parse_quality(value.strip())
                    break
            if quality is not None:
                ranges.append(MediaRange(main, sub, quality))
    return ranges


def quality_of(ranges: list[MediaRange], media_type: str) -> float:
    """Return the q-value the ranges give `media_type`: the most specific matching range wins."""
    best_specificity = -1
    best_quality = 0.0
    for media_range in ranges:
        specificity = media_range.specificity(media_type)
        if specificity > best_specificity:
            best_specificity, best_quality = specificity, media_range.quality
        elif specificity == best_specificity >= 0:
            best_quality = max(best_quality, media_range.quality)
    return best_quality


def choose_manifest(accept_headers: Iterable[str], manifests: ImageManifests) -> ManifestDocument:
    """Pick the manifest form to serve for the given Accept header values.

    OCI is served unless the client gives the Docker form a strictly higher q-value (which includes
    accepting only Docker). No Accept header, or one that accepts neither form (say, only schema1),
    gets OCI too: we never 404 a manifest that exists because of Accept (distribution would, for OCI).
    An image index goes to a client that accepts either index type; one that accepts neither gets
    the host's image (as distribution gives old clients the default platform's manifest).
    The decisions are remembered per distinct Accept value (a client sends the same one every time).
    """
    headers = tuple(accept_headers)
    oci_type, docker_type = manifests.oci.media_type, manifests.docker.media_type
    if manifests.is_index and not _accepts_either(headers, oci_type, docker_type):
        return choose_manifest(headers, manifests.host_image())
    if _prefers_docker(headers, oci_type, docker_type):
        return manifests.docker
    return manifests.oci


@lru_cache(maxsize=256)
def _accepts_either(accept_headers: tuple[str, ...], oci_type: str, docker_type: str) -> bool:
    ranges = parse_accept(accept_headers)
    return not ranges or max(quality_of(ranges, oci_type), quality_of(ranges, docker_type)) > 0


@lru_cache(maxsize=256)
def _prefers_docker(accept_headers: tuple[str, ...], oci_type: str, docker_type: str) -> bool:
    ranges = parse_accept(accept_headers)
    return bool(ranges) and quality_of(ranges, docker_type) > quality_of(ranges, oci_type)
