"""An in-memory IImageService for API tests: counts calls, tracks opened blob files, injects failures."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from nixforge.errors import BlobUnknown, ManifestUnknown, NameUnknown
from nixforge.images.interfaces import BlobFile, IImageService
from nixforge.oci.documents import ImageManifests, LayerBlob, ManifestDocument, build_manifests, sha256_digest
from nixforge.oci.referrers import subject_digest


class TrackedFile(io.RawIOBase):
    """A read-only binary file that records its reads and whether it was closed."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner = inner
        self.reads: list[int] = []
        self.bytes_read = 0
        self.on_close: list[Callable[[], None]] = []

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable."""
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Seek the wrapped file."""
        return self._inner.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        """Read from the wrapped file, recording the call."""
        data = self._inner.read(size)
        self.reads.append(size)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        """Close the wrapped file and notify the watchers once."""
        if not self.closed:
            self._inner.close()
            super().close()
            for callback in self.on_close:
                callback()


@implementer(IImageService)
class FakeImageService:
    """Images, manifests and blobs held in dictionaries; `calls` lists every call made."""

    def __init__(self) -> None:
        self.images: dict[tuple[str, str], ImageManifests] = {}
        self.manifests: dict[tuple[str, str], ManifestDocument] = {}
        self.blobs: dict[tuple[str, str], BlobFile] = {}
        self.repos: set[str] = set()
        self.calls: list[tuple[str, ...]] = []
        self.failures: dict[str, Exception] = {}
        self.pending: dict[str, Deferred[object]] = {}
        self.opened: list[TrackedFile] = []
        self.artifacts: dict[str, list[ManifestDocument]] = {}
        self.build_id: str | None = None

    def add_image(self, name: str, tag: str, layers: list[bytes] | None = None) -> ImageManifests:
        """Add an image whose config and layers become blobs of `name`; return its manifests."""
        config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
        config_digest = self.add_blob(name, config)
        layer_blobs = [
            LayerBlob(self.add_blob(name, data), len(data), sha256_digest(data)) for data in layers or [b"layer"]
        ]
        manifests = build_manifests(config_digest, len(config), layer_blobs, {"tag": tag})
        self.images[(name, tag)] = manifests
        for document in (manifests.oci, manifests.docker):
            self.manifests[(name, document.digest)] = document
        self.repos.add(name)
        return manifests

    def add_blob(self, name: str, data: bytes) -> str:
        """Store `data` as an in-memory blob of `name`; return its digest."""
        digest = sha256_digest(data)
        self.blobs[(name, digest)] = BlobFile(digest, len(data), lambda: self._track(io.BytesIO(data)))
        self.repos.add(name)
        return digest

    def add_blob_file(self, name: str, path: Path, digest: str) -> BlobFile:
        """Register the file at `path` as a blob of `name` under `digest` (not verified)."""
        blob = BlobFile(digest, path.stat().st_size, lambda: self._track(path.open("rb")))
        self.blobs[(name, digest)] = blob
        self.repos.add(name)
        return blob

    def _track(self, inner: BinaryIO) -> BinaryIO:
        tracked = TrackedFile(inner)
        self.opened.append(tracked)
        return tracked  # type: ignore[return-value]

    def _answer(self, method: str, compute: Callable[[], object]) -> Deferred:
        if method in self.failures:
            return fail(self.failures[method])
        if method in self.pending:
            return self.pending[method]
        try:
            return succeed(compute())
        except Exception as error:
            return fail(error)

    def _repo(self, name: str) -> None:
        if name not in self.repos:
            raise NameUnknown("repository name not known to registry", {"name": name})

    def resolve_tag(self, name: str, tag: str, on_build: Callable[[str], None] | None = None) -> Deferred:
        """Return both forms of name:tag; `on_build` is told `build_id` when one is set (a build started)."""
        self.calls.append(("resolve_tag", name, tag))
        if on_build is not None and self.build_id is not None:
            on_build(self.build_id)

        def compute() -> ImageManifests:
            self._repo(name)
            if (name, tag) not in self.images:
                raise ManifestUnknown("manifest unknown", {"tag": tag})
            return self.images[(name, tag)]

        return self._answer("resolve_tag", compute)

    def manifest_by_digest(self, name: str, digest: str) -> Deferred:
        """Return the manifest of `name` with that digest."""
        self.calls.append(("manifest_by_digest", name, digest))

        def compute() -> ManifestDocument:
            self._repo(name)
            if (name, digest) not in self.manifests:
                raise ManifestUnknown("manifest unknown", {"digest": digest})
            return self.manifests[(name, digest)]

        return self._answer("manifest_by_digest", compute)

    def referrers(self, name: str, digest: str) -> Deferred:
        """Return the artifacts added with `add_referrer` whose subject is `digest`."""
        self.calls.append(("referrers", name, digest))
        found = [document for document in self.artifacts.get(name, []) if subject_digest(document) == digest]
        return self._answer("referrers", lambda: found)

    def add_referrer(self, name: str, document: ManifestDocument) -> None:
        """Make `document` (an artifact manifest) a referrer of its subject, fetchable by digest."""
        self.artifacts.setdefault(name, []).append(document)
        self.manifests[(name, document.digest)] = document

    def blob(self, name: str, digest: str) -> Deferred:
        """Return the blob of `name` with that digest."""
        self.calls.append(("blob", name, digest))

        def compute() -> BlobFile:
            self._repo(name)
            if (name, digest) not in self.blobs:
                raise BlobUnknown("blob unknown to registry", {"digest": digest})
            return self.blobs[(name, digest)]

        return self._answer("blob", compute)

    def tags(self, name: str) -> Deferred:
        """Return the sorted tags of `name`."""
        self.calls.append(("tags", name))

        def compute() -> list[str]:
            self._repo(name)
            return sorted(tag for (repo, tag) in self.images if repo == name)

        return self._answer("tags", compute)

    def refresh(self, name: str | None) -> list[str]:
        """Record the call; return the `name:tag`s held for `name` (all when None), sorted."""
        self.calls.append(("refresh", name or ""))
        if "refresh" in self.failures:
            raise self.failures["refresh"]
        return sorted(f"{repo}:{tag}" for (repo, tag) in self.images if name in (None, repo))

    def repositories(self) -> Deferred:
        """Return every repository, sorted."""
        self.calls.append(("repositories",))
        return self._answer("repositories", lambda: sorted(self.repos))


class StubClient:
    """Drive treq's StubTreq synchronously: a Clock-run Cooperator streams producer bodies."""

    def __init__(self, resource: object, clock: object) -> None:
        from treq.testing import StubTreq

        self.stub = StubTreq(resource)
        self.clock = clock

    def wait(self, deferred: Deferred) -> object:
        """Flush the in-memory connection until `deferred` fires; return its result or raise."""
        results: list[object] = []
        deferred.addBoth(results.append)
        for _ in range(1000):
            if results:
                break
            self.clock.advance(0)  # type: ignore[attr-defined]
            self.stub.flush()
        assert results, "the request never completed"
        result = results[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def request(self, method: str, path: str, headers: dict[str, list[str]] | None = None) -> tuple:
        """Send one request; return (response, body bytes)."""
        response = self.wait(self.stub.request(method, "http://registry.test" + path, headers=headers))
        body = self.wait(self.stub.content(response))
        return response, body
