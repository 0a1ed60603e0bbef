"""The Nix binary cache of the served closures: decide what is served, make each NAR once, sign narinfos.

A narinfo is made the first time a served store path is asked for: Nix dumps the path's NAR, which
is compressed and stored as a blob under its file hash, and a small durable record keeps the facts.
Later narinfos are answered from memory and NARs are served like any blob: no Nix runs again.
Only paths in the closure of an image served now (ServedClosures: the policy applies) are answered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.logger import Logger

from nixforge.errors import BlobUnknown, BuildFailed
from nixforge.images.blob_files import stored_blob, stored_size
from nixforge.images.interfaces import BlobFile
from nixforge.images.served_closures import ServedClosures
from nixforge.nix.client import NixClient, NixError
from nixforge.nix.nar_dump import dump_nar
from nixforge.nix.narinfo import CACHE_INFO, NarInfo, file_sha256
from nixforge.nix.signing import CacheKey
from nixforge.oci.nar_hash import nar_hash_hex
from nixforge.store.interfaces import IBlobStore
from nixforge.store.narinfo_records import INarRecords, NarRecord

log = Logger()
NO_KEY = "no binary cache here: NIXFORGE_CACHE_KEY_FILE is not set (see docs/nix-hosts.md)"
NOT_SERVED = "not in the closure of any image this registry serves now"

SIGNED_KEPT = 4096
"""Signed narinfos kept in memory (each a few hundred bytes); older ones are signed again when asked."""

@define(eq=False)
class _Shared:
    """One NAR being made, and how many requests still wait for it."""

    job: Deferred[NarRecord]
    waiting: list[Deferred[NarRecord]] = field(factory=list)


@define(eq=False)
class NixCache:
    """Answers `nix-cache-info`, `<hash>.narinfo` and `nar/<file>` for the served closures."""

    served: ServedClosures
    nix: NixClient
    store: IBlobStore
    records: INarRecords
    key: CacheKey | None
    run_in_thread: Callable[..., Deferred[Any]]
    reactor: Any
    max_dumps: int = 2
    _making: dict[str, _Shared] = field(factory=dict, init=False)
    _slots: DeferredSemaphore = field(init=False)
    # (path hash, NAR digest) → the signed narinfo, the most recently used last; at most SIGNED_KEPT.
    _signed: OrderedDict[tuple[str, str], bytes] = field(factory=OrderedDict, init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = DeferredSemaphore(self.max_dumps)

    def cache_info(self) -> bytes:
        """The `nix-cache-info` file; BlobUnknown when there is no key."""
        self._require_key()
        return CACHE_INFO.encode()

    def _require_key(self) -> CacheKey:
        if self.key is None:
            raise BlobUnknown(NO_KEY, {"setting": "NIXFORGE_CACHE_KEY_FILE"})
        return self.key

    async def served_path(self, hash_part: str) -> str:
        """The served store path with this hash; BlobUnknown (saying why) otherwise."""
        self._require_key()
        await self.served.refresh()
        path = self.served.path_of_hash(hash_part)
        if path is None:
            raise BlobUnknown(NOT_SERVED, {"hash": hash_part[:64]})
        return path

    async def narinfo(self, hash_part: str) -> bytes:
        """The signed narinfo of a served path, making (dumping) its NAR the first time."""
        path = await self.served_path(hash_part)
        record = self.records.get(hash_part)
        if record is None:  # another replica may have made it
            record = await self.run_in_thread(self.records.lookup, hash_part)
        if (record is None or record.store_path != path
                or await stored_size(self.store, record.file_digest, self.run_in_thread) is None):
            record = await self._shared(hash_part, path)
        return self._sign(hash_part, record)

    def _sign(self, hash_part: str, record: NarRecord) -> bytes:
        key = self._require_key()
        memo = (hash_part, record.file_digest)
        text = self._signed.get(memo)
        if text is not None:
            self._signed.move_to_end(memo)
        else:
            info = NarInfo(record.store_path, bytes.fromhex(record.file_digest.removeprefix("sha256:")),
                           record.file_size, bytes.fromhex(record.nar_hash_hex), record.nar_size,
                           record.references, record.deriver)
            text = info.text(key.sign(info.fingerprint())).encode()
            self._signed[memo] = text
            while len(self._signed) > SIGNED_KEPT:
                self._signed.popitem(last=False)
        return text

    async def nar(self, file_name: str) -> BlobFile:
        """A stored NAR of a served path, by its `nar/<file>` name; BlobUnknown otherwise."""
        self._require_key()
        try:
            digest = "sha256:" + file_sha256(file_name).hex()
        except ValueError:
            raise BlobUnknown("not a NAR file name of this cache", {"file": file_name[:100]}) from None
        hash_part = self.records.hash_of_file(digest)
        if hash_part is None:
            raise BlobUnknown("no such NAR", {"file": file_name[:100]})
        await self.served_path(hash_part)
        blob = await stored_blob(self.store, digest, self.run_in_thread)
        if blob is None:
            raise BlobUnknown("the NAR was collected; ask for its narinfo again", {"file": file_name[:100]})
        return blob

    def live_blobs(self) -> list[str]:
        """The NAR blobs of the paths served now: GC keeps them (thread-safe: reads snapshots).

        Until the served closures were first read (just after a start), every recorded NAR.
        """
        loaded = self.served.loaded
        return [record.file_digest for hash_part, record in self.records.items()
                if not loaded or self.served.path_of_hash(hash_part) == record.store_path]

    def _shared(self, hash_part: str, path: str) -> Deferred[NarRecord]:
        """One making per path whatever the number of requests; it stops when every request has gone."""
        shared = self._making.get(hash_part)
        if shared is None:
            shared = self._making[hash_part] = _Shared(ensureDeferred(self._make(path, hash_part)))
            shared.job.addBoth(lambda result: self._finished(hash_part, shared, result))
        waiter: Deferred[NarRecord] = Deferred(canceller=lambda _: self._leave(hash_part, shared))
        shared.waiting.append(waiter)
        return waiter

    def _finished(self, hash_part: str, shared: _Shared, result: object) -> None:
        if self._making.get(hash_part) is shared:
            del self._making[hash_part]
        for waiter in shared.waiting:
            if not waiter.called:
                waiter.callback(result)

    def _leave(self, hash_part: str, shared: _Shared) -> None:
        remaining = [waiter for waiter in shared.waiting if not waiter.called]
        if len(remaining) <= 1 and not shared.job.called:  # the one being cancelled is the last
            if self._making.get(hash_part) is shared:
                del self._making[hash_part]
            shared.job.cancel()

    async def _make(self, path: str, hash_part: str) -> NarRecord:
        await self._slots.acquire()
        try:
            try:
                info = await self.nix.path_info(path)
            except NixError as error:
                raise BuildFailed("nix path-info failed", {"error": error.message, "log": error.log_tail}) from error
            log.info("dumping the NAR of {path}", path=path)
            started = self.reactor.seconds()
            try:
                nar = await dump_nar(self.reactor, self.nix, path, self.store.writer(), self.run_in_thread,
                                     expected=bytes.fromhex(nar_hash_hex(info.nar_hash)))
            except NixError as error:
                raise BuildFailed("cannot dump the NAR", {"error": error.message, "log": error.log_tail}) from error
            record = NarRecord(path, nar.digest, nar.size, nar.nar_sha256.hex(), nar.nar_size,
                               tuple(info.references), info.deriver)
            await self.run_in_thread(self.records.put, hash_part, record)
            log.info("stored the NAR of {path}: {nar} bytes, {file} compressed, in {seconds:.2f} s", path=path,
                     nar=nar.nar_size, file=nar.size, seconds=self.reactor.seconds() - started)
            return record
        finally:
            self._slots.release()
