"""Remembered errors are answered again as fresh copies: no traceback grows, no frame is kept."""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from nixforge.errors import BuildFailed, ForgeError, NameUnknown, StoreFull, TooManyBuilds
from nixforge.images.failure_memory import FailureMemory
from nixforge.images.missing_cache import MissingCache
from nixforge.images.single_flight import SingleFlight

REPEATS = 10_000


def raised(error: ForgeError) -> ForgeError:
    """Raise `error` from two frames down (holding a big local, as a request would) and catch it."""

    def inner(request: bytes) -> None:
        raise error

    def outer() -> None:
        inner(b"x" * 10_000)

    try:
        outer()
    except ForgeError as caught:
        return caught
    raise AssertionError("not raised")


def traceback_length(error: BaseException) -> int:
    return len(traceback.extract_tb(error.__traceback__))


def holds_no_frames(error: BaseException) -> bool:
    return error.__traceback__ is None and error.__context__ is None and error.__cause__ is None


def caught_from(make: Callable[[], ForgeError]) -> ForgeError:
    """A real raise with a context and a cause, as a failed build's error has."""
    try:
        try:
            raise OSError("inner")
        except OSError as cause:
            raise make() from cause
    except ForgeError as error:
        return error


def test_raising_one_object_again_grows_its_traceback() -> None:
    """The bug the memories must not have: the same object raised again keeps every frame of every raise."""
    error = NameUnknown("no such package")
    for _ in range(100):
        raised(error)
    assert traceback_length(error) > 100


@pytest.mark.parametrize("make", [
    lambda: BuildFailed("build failed", {"log": ["error: boom"], "build": "abc"}),
    lambda: TooManyBuilds("too many", retry_after=7, detail={"queued": 3}),
    lambda: StoreFull("disk full", retry_after=11),
])
def test_fresh_keeps_class_and_fields_and_drops_frames(make: Callable[[], ForgeError]) -> None:
    original = caught_from(make)
    assert not holds_no_frames(original)
    copy = original.fresh()
    assert copy is not original and type(copy) is type(original)
    assert (copy.args, copy.message, copy.detail) == (original.args, original.message, original.detail)
    assert vars(copy) == vars(original)  # retry_after too
    assert str(copy) == str(original)
    assert holds_no_frames(copy)


def test_missing_cache_hands_out_fresh_errors_whose_traceback_does_not_grow() -> None:
    cache = MissingCache()
    cache.remember(("zz-nope", "latest"), caught_from(lambda: NameUnknown("no such package", {"name": "zz-nope"})),
                   expires_at=100.0)
    for _ in range(REPEATS):
        error = cache.get(("zz-nope", "latest"), now=1.0)
        assert isinstance(error, NameUnknown) and error.detail == {"name": "zz-nope"}
        assert traceback_length(raised(error)) == 3  # raised(), outer(), inner(): nothing of earlier raises
    kept, _ = cache._entries[("zz-nope", "latest")]
    assert holds_no_frames(kept)


def test_failure_memory_hands_out_fresh_errors_whose_traceback_does_not_grow() -> None:
    memory = FailureMemory(ttl=60)
    memory.remember("broken", "latest", "rev1", caught_from(lambda: BuildFailed("nix build failed", {"log": ["x"]})),
                    now=0.0)
    for _ in range(REPEATS):
        error = memory.get("broken", "latest", now=1.0, current_lock="rev1")
        assert isinstance(error, BuildFailed) and error.message == "nix build failed"
        assert traceback_length(raised(error)) == 3
    assert holds_no_frames(memory._failures[("broken", "latest")].error)


def test_a_remembered_error_keeps_no_request_alive() -> None:
    """Locals of the frames the first raise went through (a request, say) are freed once it is remembered."""

    class Request:
        pass

    request = Request()
    count_before = sys.getrefcount(request)

    def serve(request: Request) -> NameUnknown:
        try:
            raise NameUnknown("no such package")
        except NameUnknown as error:
            return error

    cache = MissingCache()
    cache.remember("k", serve(request), expires_at=10.0)
    gc.collect()
    assert sys.getrefcount(request) == count_before


def test_each_waiter_of_a_shared_job_gets_its_own_error() -> None:
    flights = SingleFlight()
    job: Deferred[str] = Deferred()
    waiters = [flights.run("k", lambda: job) for _ in range(3)]
    errors: list[BaseException] = []
    for waiter in waiters:
        waiter.addErrback(lambda failure: errors.append(failure.value))
    job.errback(Failure(caught_from(lambda: BuildFailed("failed", {"log": ["x"]}))))
    assert len({id(error) for error in errors}) == 3
    assert all(isinstance(error, BuildFailed) and error.detail == {"log": ["x"]} for error in errors)
    assert all(holds_no_frames(error) for error in errors)


def test_many_awaiting_waiters_do_not_lengthen_each_others_tracebacks() -> None:
    flights = SingleFlight()
    job: Deferred[str] = Deferred()
    lengths: list[int] = []

    async def pull() -> None:
        try:
            await flights.run("k", lambda: job)
        except BuildFailed as error:
            lengths.append(traceback_length(error))

    pulls = [ensureDeferred(pull()) for _ in range(1000)]
    job.errback(Failure(BuildFailed("failed")))
    assert all(done.called for done in pulls)
    assert len(lengths) == 1000 and max(lengths) <= 2


def test_other_errors_are_passed_on_as_they_are() -> None:
    flights = SingleFlight()
    job: Deferred[str] = Deferred()
    waiter = flights.run("k", lambda: job)
    seen: list[BaseException] = []
    waiter.addErrback(lambda failure: seen.append(failure.value))
    bug = ZeroDivisionError("bug")
    job.errback(Failure(bug))
    assert seen == [bug]
