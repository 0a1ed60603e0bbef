"""FlakeLocks: one `nix flake metadata` per flake reference and refresh interval, shared by every name."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from nixforge.errors import BuildFailed, ManifestUnknown
from nixforge.images.flake_locks import FAILED_LOCK_TTL, FlakeLock, FlakeLocks, locked_revision
from nixforge.nix.client import LineSink, NixError, NixRefUnknown

from .fakes import result_of

COMMIT = "c" * 40


class MetadataNix:
    """Answers `nix flake metadata` with the current `revision`, recording each call; may fail or wait."""

    def __init__(self) -> None:
        self.revision = 1
        self.asked: list[str] = []
        self.error: Exception | None = None
        self.gate: Deferred[None] | None = None

    async def metadata(self, flake_ref: str, timeout: float | None = None, refresh: bool = False,
                       lines: LineSink = None) -> dict[str, Any]:
        self.asked.append(("--refresh " if refresh else "") + flake_ref)
        revision = self.revision  # what Nix fetches now, however long it then takes
        if self.gate is not None:
            await self.gate
        if self.error is not None:
            raise self.error
        return {"url": f"{flake_ref}?rev={revision}", "locked": {"rev": f"{revision:040x}"},
                "lastModified": 1_700_000_000 + revision}


def make_locks(**overrides: Any) -> tuple[FlakeLocks, MetadataNix, Clock]:
    nix, clock = MetadataNix(), Clock()
    settings: dict[str, Any] = {"nix": nix, "clock": clock, "flake": "github:o/r", "refresh_interval": 300.0,
                                "timeout": 60.0}
    settings.update(overrides)
    return FlakeLocks(**settings), settings["nix"], clock


def lock(locks: FlakeLocks, tag: str) -> Any:
    return result_of(ensureDeferred(locks.lock(tag)))


def test_a_moving_tag_is_locked_once_per_interval_with_refresh() -> None:
    locks, nix, clock = make_locks()
    first = lock(locks, "latest")
    assert (first.flake_ref, first.locked, first.revision) == ("github:o/r", "github:o/r?rev=1", f"{1:040x}")
    assert first.last_modified == 1_700_000_001 and first.at == 0
    nix.revision = 2
    clock.advance(299)
    assert lock(locks, "latest") is first  # within the interval: no Nix, the same answer
    assert locks.known("latest") is first
    assert nix.asked == ["--refresh github:o/r"]
    clock.advance(1)
    assert locks.known("latest") is first  # old, but not forgotten: the next lock asks Nix again
    second = lock(locks, "latest")
    assert second.locked == "github:o/r?rev=2" and second.at == 300
    assert nix.asked == ["--refresh github:o/r"] * 2
    assert locks.locks_run == 2


def test_each_tag_is_its_own_flake_reference() -> None:
    locks, nix, _ = make_locks()
    for tag in ("latest", "main", "v1.0", "main", "latest"):
        lock(locks, tag)
    assert nix.asked == ["--refresh github:o/r", "--refresh github:o/r/main", "--refresh github:o/r/v1.0"]


def test_concurrent_locks_of_a_reference_are_one_nix_run() -> None:
    locks, nix, _ = make_locks()
    nix.gate = Deferred()
    waiting = [ensureDeferred(locks.lock("latest")) for _ in range(3)]
    assert not any(each.called for each in waiting)
    nix.gate.callback(None)
    assert len({id(result_of(each)) for each in waiting}) == 1
    assert nix.asked == ["--refresh github:o/r"]


def test_expire_locks_moving_tags_again_on_their_next_use() -> None:
    locks, nix, clock = make_locks()
    lock(locks, "latest")
    lock(locks, COMMIT)
    nix.revision = 2
    clock.advance(10)
    locks.expire()  # the refresh webhook
    assert lock(locks, "latest").locked == "github:o/r?rev=2"
    assert lock(locks, COMMIT).locked == f"github:o/r/{COMMIT}?rev=1"  # a commit never moves
    assert nix.asked == ["--refresh github:o/r", f"github:o/r/{COMMIT}", "--refresh github:o/r"]


def test_a_lock_asked_after_expire_does_not_join_a_fetch_started_before() -> None:
    locks, nix, _ = make_locks()
    nix.gate = Deferred()
    before = ensureDeferred(locks.lock("latest"))  # a pull's lock, still fetching
    nix.revision = 2
    locks.expire()  # a push, then the webhook: what that fetch finds may be older than the push
    after = ensureDeferred(locks.lock("latest"))
    nix.gate.callback(None)
    assert result_of(before).locked == "github:o/r?rev=1"
    assert result_of(after).locked == "github:o/r?rev=2"
    assert nix.asked == ["--refresh github:o/r"] * 2
    assert lock(locks, "latest").locked == "github:o/r?rev=2"  # kept: the newer lock
    assert len(nix.asked) == 2


def test_an_older_fetch_that_ends_last_does_not_replace_the_newer_lock() -> None:
    gates: list[Deferred[None]] = []

    class OneGateEach(MetadataNix):
        async def metadata(self, flake_ref: str, timeout: float | None = None, refresh: bool = False,
                           lines: LineSink = None) -> dict[str, Any]:
            self.gate = Deferred()
            gates.append(self.gate)
            return await super().metadata(flake_ref, timeout, refresh, lines)

    locks, nix, _ = make_locks(nix=OneGateEach())
    before = ensureDeferred(locks.lock("latest"))
    nix.revision = 2
    locks.expire()
    after = ensureDeferred(locks.lock("latest"))
    gates[1].callback(None)
    gates[0].callback(None)
    assert (result_of(before).locked, result_of(after).locked) == ("github:o/r?rev=1", "github:o/r?rev=2")
    assert lock(locks, "latest").locked == "github:o/r?rev=2" and len(nix.asked) == 2


def test_a_fetch_started_before_expire_that_fails_after_it_is_not_remembered() -> None:
    locks, nix, _ = make_locks()
    nix.gate = Deferred()
    before = ensureDeferred(locks.lock("main"))  # the branch does not exist yet
    nix.error = NixRefUnknown("error: cannot find Git reference 'main'", 1, [])
    locks.expire()  # it was just pushed: the webhook
    nix.gate.callback(None)
    assert result_of(before).check(ManifestUnknown)
    nix.gate, nix.error = None, None
    assert lock(locks, "main").locked == "github:o/r/main?rev=1"  # asked of Nix again, at once
    assert len(nix.asked) == 2


def test_a_commit_tag_is_locked_once_without_refresh() -> None:
    locks, nix, clock = make_locks()
    first = lock(locks, COMMIT)
    clock.advance(10_000)
    assert lock(locks, COMMIT) is first and locks.known(COMMIT) is first
    assert nix.asked == [f"github:o/r/{COMMIT}"]


def test_a_failed_lock_is_remembered_and_not_run_again_until_its_ttl_or_expire() -> None:
    locks, nix, clock = make_locks()
    nix.error = NixRefUnknown("error: cannot find Git reference 'nope'", 1, ["fetching github:o/r/nope"])
    failures = [result_of(ensureDeferred(locks.lock("nope"))) for _ in range(3)]
    assert all(failure.check(ManifestUnknown) for failure in failures)
    assert failures[0].value.detail == {"tag": "nope", "flake": "github:o/r/nope"}
    assert len({id(failure.value) for failure in failures}) == 3  # a fresh copy each time, same content
    assert {(f.value.message, repr(f.value.detail)) for f in failures} == {
        (failures[0].value.message, repr(failures[0].value.detail))}
    assert nix.asked == ["--refresh github:o/r/nope"]
    clock.advance(FAILED_LOCK_TTL - 1)
    assert result_of(ensureDeferred(locks.lock("nope"))).check(ManifestUnknown)
    assert len(nix.asked) == 1
    clock.advance(1)  # the TTL is over: Nix is asked again
    assert result_of(ensureDeferred(locks.lock("nope"))).check(ManifestUnknown)
    assert len(nix.asked) == 2
    locks.expire()  # the webhook forgets failed locks at once
    nix.error = None
    assert lock(locks, "nope").locked == "github:o/r/nope?rev=1"
    assert len(nix.asked) == 3


def test_an_unreachable_flake_at_latest_is_a_build_failure() -> None:
    locks, nix, _ = make_locks()
    nix.error = NixError("error: unable to download 'https://api.github.com/...'", 1, ["HTTP error 503"])
    failure = result_of(ensureDeferred(locks.lock("latest")))
    assert failure.check(BuildFailed) and failure.value.detail["log"] == ["HTTP error 503"]


def test_listeners_hear_each_new_lock_in_order_and_are_awaited() -> None:
    told: list[tuple[str, str, str]] = []
    slow: Deferred[None] = Deferred()

    def first(tag: str, new: FlakeLock) -> None:
        told.append(("first", tag, new.locked))

    async def second(tag: str, new: FlakeLock) -> None:
        told.append(("second", tag, new.locked))
        await slow

    locks, _, clock = make_locks(listeners=[first, second])
    pending = ensureDeferred(locks.lock("latest"))
    assert told == [("first", "latest", "github:o/r?rev=1"), ("second", "latest", "github:o/r?rev=1")]
    assert not pending.called  # the lock waits for its listeners
    slow.callback(None)
    assert result_of(pending).locked == "github:o/r?rev=1"
    lock(locks, "latest")  # kept: nobody is told again
    assert len(told) == 2
    clock.advance(300)
    lock(locks, "latest")  # locked again, even at the same revision: told again
    assert len(told) == 4


def test_the_revision_comes_from_revision_or_locked_rev() -> None:
    assert locked_revision({"revision": "a" * 40, "locked": {"rev": "b" * 40}}) == "a" * 40
    assert locked_revision({"locked": {"rev": "b" * 40}}) == "b" * 40
    assert locked_revision({"locked": {"narHash": "sha256-x"}}) is None
    assert locked_revision({}) is None


def test_only_the_newest_references_are_kept() -> None:
    locks, nix, _ = make_locks(capacity=2)
    for tag in ("a1", "a2", "a3", "a1"):
        lock(locks, tag)
    assert nix.asked == ["--refresh github:o/r/a1", "--refresh github:o/r/a2", "--refresh github:o/r/a3",
                         "--refresh github:o/r/a1"]
    assert locks.known("a2") is None and locks.known("a3") is not None and locks.known("a1") is not None
