"""Blobs as S3 objects: verified locally, uploaded once with If-None-Match, multipart from the temp file."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from botocore.exceptions import ClientError
from twisted.logger import Logger
from zope.interface import implementer

from nixforge.errors import BlobUnknown, DigestInvalid
from nixforge.store.blob_writing import HashingTempFile, blob_hex
from nixforge.store.durable import full_is_store_full
from nixforge.store.interfaces import IBlobLocations, IBlobStreams, IBlobWriter, ICollectableBlobStore
from nixforge.store.leases import BlobLeases
from nixforge.store.s3_client import S3Calls, S3Location, is_conflict, is_missing

log = Logger()

MULTIPART_THRESHOLD = 32 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024
SIZES_KEPT = 100_000
"""Blob sizes remembered (about 15 MB): a blob asked for again after it was forgotten costs one HEAD."""
_TEMP_PREFIX = "s3-blob-"


@implementer(IBlobWriter)
class S3BlobWriter(HashingTempFile):
    """Bytes go to a local temporary file, hashed; `commit` checks the digest, then uploads."""

    def __init__(self, store: S3BlobStore) -> None:
        self._store = store
        fd, temp_path = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=store.temp_dir)
        super().__init__(os.fdopen(fd, "w+b"), temp_path)

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        """Verify, then upload (unless stored already); return `(digest, size)`. Nothing is visible before."""
        digest = self._digest()
        try:
            if expected_digest is not None and expected_digest != digest:
                raise DigestInvalid("blob content does not match its digest",
                                    {"expected": str(expected_digest)[:200], "actual": digest})
            with full_is_store_full():
                self._file.flush()
            self._store.upload(digest, self._file, self._size)
        finally:
            self.abort()
        return digest, self._size


@implementer(ICollectableBlobStore, IBlobLocations, IBlobStreams)
class S3BlobStore:
    """Blob `sha256:<hex>` is the object `<prefix>blobs/sha256/<hex>`; stored blobs are never rewritten.

    Sizes of present blobs are cached (blobs never change) and refreshed by a listing; on the
    reactor thread (`on_reactor`), `size` answers from that cache only, never with a request.
    Reads are copied into a local temporary file so callers get a seekable file. `temp_dir` is
    local scratch. GC never deletes a blob this process first listed less than `grace` seconds ago
    (on its own monotonic clock), so blobs another replica's running build wrote but has not
    recorded yet are safe.
    """

    def __init__(self, calls: S3Calls, location: S3Location, temp_dir: str, grace: float = 3600.0,
                 monotonic: Callable[[], float] = time.monotonic, multipart_threshold: int = MULTIPART_THRESHOLD,
                 part_size: int = PART_SIZE, on_reactor: Callable[[], bool] = lambda: False) -> None:
        self.calls = calls
        self.bucket = location.bucket
        self.base = f"{location.prefix}blobs/sha256/"
        self.temp_dir = os.path.abspath(temp_dir)
        self.grace = grace
        self.monotonic = monotonic
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.multipart_uploads = 0
        self.on_reactor = on_reactor
        self.leases = BlobLeases()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._first_seen: dict[str, float] = {}
        self._uploads_seen: dict[str, float] = {}
        self._live_uploads: set[str] = set()
        self._lock = threading.Lock()
        os.makedirs(self.temp_dir, exist_ok=True)
        for name in os.listdir(self.temp_dir):
            if name.startswith(_TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.temp_dir, name))

    def key(self, digest: str) -> str:
        """The object key of blob `digest`; DigestInvalid if not sha256."""
        hex_digest = blob_hex(digest)
        if hex_digest is None:
            raise DigestInvalid("not a sha256 digest", {"digest": str(digest)[:200]})
        return self.base + hex_digest

    def _known(self, digest: str, size: int) -> None:
        with self.leases.lock:
            self._remember_locked([(digest, size)])
            self.leases.touch_locked(digest)

    def _remember_locked(self, sizes: list[tuple[str, int]]) -> None:
        """Cache sizes (most recent last), forgetting the least recently used past SIZES_KEPT."""
        for digest, size in sizes:
            self._sizes[digest] = size
            self._sizes.move_to_end(digest)
        while len(self._sizes) > SIZES_KEPT:
            self._sizes.popitem(last=False)  # asked for again later: one HEAD

    def upload(self, digest: str, file: BinaryIO, size: int) -> None:
        """Store the verified bytes of `file` under `digest` unless present (`If-None-Match: *`)."""
        if self.size(digest) is not None:
            return
        try:
            if size < self.multipart_threshold:
                file.seek(0)
                body = file.read()
                self.calls("put_object", Bucket=self.bucket, Key=self.key(digest), Body=body, IfNoneMatch="*")
            else:
                self._multipart(digest, file, size)
        except ClientError as error:
            if not is_conflict(error):
                raise
            log.debug("blob {digest} was stored meanwhile", digest=digest)
        self._known(digest, size)

    def _multipart(self, digest: str, file: BinaryIO, size: int) -> None:
        key = self.key(digest)
        upload = self.calls("create_multipart_upload", Bucket=self.bucket, Key=key)["UploadId"]
        self.multipart_uploads += 1
        with self._lock:
            self._live_uploads.add(upload)
        try:
            parts = []
            for number, offset in enumerate(range(0, size, self.part_size), start=1):
                file.seek(offset)
                chunk = file.read(min(self.part_size, size - offset))
                etag = self.calls("upload_part", Bucket=self.bucket, Key=key, UploadId=upload,
                                  PartNumber=number, Body=chunk)["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
            self.calls("complete_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload,
                       MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        except BaseException:
            with contextlib.suppress(Exception):
                self.calls("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload)
            raise
        finally:
            with self._lock:
                self._live_uploads.discard(upload)

    def size(self, digest: str) -> int | None:
        """The blob's size (cached once known), or None; a present blob counts as in use (leases)."""
        if blob_hex(digest) is None:
            return None
        with self.leases.lock:
            size = self._sizes.get(digest)
            if size is not None:
                self._sizes.move_to_end(digest)
                self.leases.touch_locked(digest)
                return size
        if self.on_reactor():
            return None  # unknown until the next refresh; no request may block the reactor
        try:
            head = self.calls("head_object", Bucket=self.bucket, Key=self.key(digest))
        except ClientError as error:
            if is_missing(error):
                return None
            raise
        self._known(digest, int(head["ContentLength"]))
        return int(head["ContentLength"])

    def _get(self, digest: str, sink: Callable[[Any], Any]) -> Any:
        if blob_hex(digest) is None:
            raise BlobUnknown("blob unknown to registry", {"digest": str(digest)[:200]})

        def fetch() -> Any:
            response = self.calls.client.get_object(Bucket=self.bucket, Key=self.key(digest))
            with response["Body"] as body:
                return sink(body)
        try:
            return self.calls.run("get_object", fetch)
        except ClientError as error:
            if is_missing(error):
                raise BlobUnknown("blob unknown to registry", {"digest": digest}) from None
            raise

    def open(self, digest: str) -> BinaryIO:
        """A seekable local copy of the blob (a temporary file, gone when closed); BlobUnknown when absent."""
        local = tempfile.TemporaryFile(prefix=_TEMP_PREFIX, dir=self.temp_dir)  # noqa: SIM115 (returned open)
        try:
            def copy(body: Any) -> None:
                while chunk := body.read(_COPY_CHUNK):
                    local.write(chunk)
            with full_is_store_full():
                self._get(digest, copy)
            local.seek(0)
        except BaseException:
            local.close()
            raise
        return local  # type: ignore[return-value]

    def stream(self, digest: str, offset: int, length: int) -> BinaryIO:
        """A reader of `length` bytes of the blob from `offset`, straight from the store (one ranged GET).

        The GET runs in the call pool (bounded; StoreUnavailable when the store does not answer); the
        reader's `read`s then block on the network: call them off the reactor, and close the reader.
        """
        if length <= 0:
            return io.BytesIO(b"")  # type: ignore[return-value]
        if blob_hex(digest) is None:
            raise BlobUnknown("blob unknown to registry", {"digest": str(digest)[:200]})
        try:
            response = self.calls("get_object", Bucket=self.bucket, Key=self.key(digest),
                                  Range=f"bytes={offset}-{offset + length - 1}")
        except ClientError as error:
            if is_missing(error):
                raise BlobUnknown("blob unknown to registry", {"digest": digest}) from None
            raise
        return response["Body"]  # type: ignore[no-any-return]

    def read(self, digest: str) -> bytes:
        """The blob's bytes; BlobUnknown when absent."""
        return bytes(self._get(digest, lambda body: body.read()))

    def url(self, digest: str, ttl: float) -> str:
        """A presigned (SigV4) GET URL of the blob, valid `ttl` seconds. Computed locally: no request.

        It carries a signature: never log it.
        """
        return str(self.calls.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(digest)}, ExpiresIn=max(1, int(ttl))))

    def writer(self) -> S3BlobWriter:
        """Start writing a new blob."""
        return S3BlobWriter(self)

    def put(self, data: bytes) -> tuple[str, int]:
        """Store small bytes (idempotent); return `(digest, size)`."""
        writer = self.writer()
        writer.write(data)
        return writer.commit()

    def refresh(self) -> int:
        """List the bucket's blobs into the size cache (other replicas' new ones); return how many are new."""
        found = list(self.digests())
        with self.leases.lock:
            new = [(digest, size) for digest, size in found if digest not in self._sizes]
            self._remember_locked(new)
        return len(new)

    def digests(self) -> Iterator[tuple[str, int]]:
        """Yield `(digest, size)` of every stored blob (one paged listing)."""
        def listing() -> list[tuple[str, int]]:
            found = []
            paginator = self.calls.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base):
                for item in page.get("Contents", []):
                    digest = "sha256:" + item["Key"][len(self.base):]
                    if blob_hex(digest) is not None:
                        found.append((digest, int(item["Size"])))
            return found
        found = self.calls.run("list_objects_v2", listing)
        now = self.monotonic()
        with self._lock:  # only what the bucket holds now: blobs other replicas deleted are forgotten
            self._first_seen = {digest: self._first_seen.get(digest, now) for digest, _ in found}
        yield from found

    def remove_abandoned(self) -> int:
        """Abort the incomplete multipart uploads of writers that died; return how many went.

        Their parts are invisible to clients (no object exists before the upload completes) but cost
        storage until aborted. An upload is abandoned when this process listed it first at least
        `grace` seconds ago (its own monotonic clock, never the store's `Initiated` time) and is not one
        of its own running uploads. A bucket lifecycle rule (`AbortIncompleteMultipartUpload`) does the
        same on stores that have one.
        """
        def listing() -> list[tuple[str, str]]:
            found = []
            paginator = self.calls.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base):
                found.extend((item["Key"], item["UploadId"]) for item in page.get("Uploads", []))
            return found
        try:
            uploads = self.calls.run("list_multipart_uploads", listing)
        except ClientError as error:  # a store without the call: leave it to a lifecycle rule
            log.warn("cannot list incomplete uploads: {error}", error=error)
            return 0
        now = self.monotonic()
        with self._lock:
            listed = {upload for _, upload in uploads}
            self._uploads_seen = {upload: self._uploads_seen.get(upload, now) for upload in listed}
            stale = [(key, upload) for key, upload in uploads
                     if upload not in self._live_uploads and now - self._uploads_seen[upload] >= self.grace]
        aborted = 0
        for key, upload in stale:
            try:
                self.calls("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload)
            except ClientError as error:
                if not is_missing(error):
                    raise
            aborted += 1
            with self._lock:
                self._uploads_seen.pop(upload, None)
        return aborted

    def delete(self, digest: str, floor: int) -> int | None:
        """Delete the blob unless a lease protects it or it is within the grace period; return the bytes freed."""
        with self._lock:
            seen = self._first_seen.get(digest)
        if seen is None or self.monotonic() - seen < self.grace:
            return None
        # Under the leases lock, as the filesystem store unlinks: a concurrent `size` (a layer-cache
        # hit) either protects the blob first or finds it gone and writes it again.
        with self.leases.unless_protected(digest, floor) as may_go:
            if not may_go:
                return None
            size = self._sizes.pop(digest, None)
            if size is None:
                try:
                    size = int(self.calls("head_object", Bucket=self.bucket, Key=self.key(digest))["ContentLength"])
                except ClientError as error:
                    if is_missing(error):
                        return None
                    raise
            self.calls("delete_object", Bucket=self.bucket, Key=self.key(digest))
        with self._lock:
            self._first_seen.pop(digest, None)
        return size
