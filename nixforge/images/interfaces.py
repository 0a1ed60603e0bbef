"""What the HTTP layer may ask of the image service."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from attrs import frozen
from twisted.internet.defer import Deferred
from zope.interface import Interface

from nixforge.oci.documents import ImageManifests, ManifestDocument


@frozen
class BlobFile:
    """A stored blob ready to stream: its size and an opener (opening is one quick syscall).

    `ranged`, from a store across the network, reads a byte range straight from it, `(offset,
    length) -> reader`, blocking (in a worker thread): the body goes out as the store sends it.
    """

    digest: str
    size: int
    opener: Callable[[], BinaryIO]
    ranged: Callable[[int, int], BinaryIO] | None = None

    def open(self) -> BinaryIO:
        """Open the blob for binary reading."""
        return self.opener()


class IImageService(Interface):
    """Resolve repositories, tags and digests; every failure is a `nixforge.errors.ForgeError`."""

    def resolve_tag(name: str, tag: str, on_build: Callable[[str], None] | None = None) -> Deferred[ImageManifests]:
        """Return both manifest forms of name:tag, building the image first if needed.

        `on_build`, when given, is told the id of a build this call starts. Fails with NameUnknown,
        ManifestUnknown, BuildFailed, BuildTimedOut, TooManyBuilds or BuildInProgress (the pull wait
        is over; the build goes on). Cancelling the returned Deferred never cancels a build other
        callers wait on.
        """

    def manifest_by_digest(name: str, digest: str) -> Deferred[ManifestDocument]:
        """Return the manifest of `name` whose bytes hash to `digest`; fails with ManifestUnknown."""

    def referrers(name: str, digest: str) -> Deferred[list[ManifestDocument]]:
        """Return the artifact manifests (SBOMs) of `name` whose subject is `digest` (maybe none).

        Fails with NameUnknown only for a name the policy refuses.
        """

    def blob(name: str, digest: str) -> Deferred[BlobFile]:
        """Return the stored blob of `name`; fails with BlobUnknown (NameUnknown if no such repo)."""

    def tags(name: str) -> Deferred[list[str]]:
        """Return the tags of `name`, sorted; fails with NameUnknown."""

    def repositories() -> Deferred[list[str]]:
        """Return the flake's catalog and every repository the registry has built, sorted."""

    def refresh(name: str | None) -> list[str]:
        """Re-resolve the stored moving tags of `name` (of all when None) now; return `name:tag`s scheduled.

        Never delays a pull of a stored image; fails (raises) with NameUnknown for a refused name.
        """
