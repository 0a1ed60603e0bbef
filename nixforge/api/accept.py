"""Accept header negotiation (werkzeug's media ranges with q-values) between the OCI and Docker manifest forms."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from nixforge.oci.documents import ImageManifests, ManifestDocument


def _range_and_quality(entry: str) -> str:
    """One Accept entry reduced to its media range and q-value, the two pieces werkzeug gets wrong alone:
    it ignores a bare `*` (old Java clients send `*; q=.2`) and lets a parameter such as
    `charset=utf-8` stop a range from matching the bare manifest type the registry serves."""
    media, *parameters = (part.strip() for part in entry.split(";"))
    quality = [part for part in parameters if part.lower().replace(" ", "").startswith("q=")]
    return ";".join(["*/*" if media == "*" else media, *quality[:1]])


def parse_accept(headers: Iterable[str]) -> MIMEAccept:
    """Every Accept header value as one werkzeug MIMEAccept; malformed entries and q-values are dropped."""
    entries = [_range_and_quality(entry) for header in headers for entry in header.split(",")]
    return parse_accept_header(",".join(entries), MIMEAccept)


def quality_of(accept: MIMEAccept, media_type: str) -> float:
    """The q-value the Accept header gives `media_type`: the most specific matching range wins."""
    return float(accept.quality(media_type))


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
    return not list(ranges) or max(quality_of(ranges, oci_type), quality_of(ranges, docker_type)) > 0


@lru_cache(maxsize=256)
def _prefers_docker(accept_headers: tuple[str, ...], oci_type: str, docker_type: str) -> bool:
    ranges = parse_accept(accept_headers)
    return bool(list(ranges)) and quality_of(ranges, docker_type) > quality_of(ranges, oci_type)
