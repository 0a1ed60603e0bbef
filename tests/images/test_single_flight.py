"""One job per key; each caller gets its own Deferred; cancelling one caller spares the job."""

from twisted.internet.defer import CancelledError, Deferred

from nixforge.images.single_flight import SingleFlight


def test_concurrent_callers_share_one_job() -> None:
    flights = SingleFlight()
    started: list[Deferred[str]] = []

    def start() -> Deferred[str]:
        started.append(Deferred())
        return started[-1]

    results: list[str] = []
    first = flights.run("k", start)
    second = flights.run("k", start)
    first.addCallback(results.append)
    second.addCallback(results.append)
    assert len(started) == 1 and flights.running("k")
    started[0].callback("image")
    assert results == ["image", "image"]
    assert not flights.running("k")


def test_cancelling_one_caller_does_not_cancel_the_job() -> None:
    flights = SingleFlight()
    job: Deferred[str] = Deferred()
    first = flights.run("k", lambda: job)
    second = flights.run("k", lambda: job)
    first.addErrback(lambda failure: failure.trap(CancelledError))
    first.cancel()
    assert not job.called
    results: list[str] = []
    second.addCallback(results.append)
    job.callback("done")
    assert results == ["done"]


def test_failures_reach_every_caller_and_the_next_call_retries() -> None:
    flights = SingleFlight()
    errors: list[str] = []
    job: Deferred[str] = Deferred()
    for _ in range(2):
        flights.run("k", lambda: job).addErrback(lambda f: errors.append(f.getErrorMessage()))
    job.errback(RuntimeError("boom"))
    assert errors == ["boom", "boom"]
    calls: list[int] = []
    flights.run("k", lambda: calls.append(1))
    assert calls == [1]


def test_a_job_that_finishes_at_once_still_answers() -> None:
    results: list[str] = []
    SingleFlight().run("k", lambda: "now").addCallback(results.append)
    assert results == ["now"]


def test_different_keys_run_separately() -> None:
    flights = SingleFlight()
    calls: list[str] = []
    flights.run("a", lambda: calls.append("a") or Deferred())
    flights.run("b", lambda: calls.append("b") or Deferred())
    assert calls == ["a", "b"]
