"""BuildSlots: pulls first, prebuilds only in slots no pull waits for and never the last, a bounded pull queue."""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred

from nixforge.errors import TooManyBuilds
from nixforge.images.build_slots import PREBUILD, PULL, BuildSlots


def granted(waiters: list[Deferred[None]]) -> list[bool]:
    return [waiter.called for waiter in waiters]


def test_slots_are_granted_at_once_up_to_the_size_then_in_order() -> None:
    slots = BuildSlots(2, max_queued=4)
    pulls = [slots.acquire(PULL) for _ in range(4)]
    assert granted(pulls) == [True, True, False, False]
    assert (slots.running, slots.queued) == (2, 2)
    slots.release(PULL)
    assert granted(pulls) == [True, True, True, False]
    assert (slots.running, slots.queued) == (2, 1)


def test_a_waiting_pull_goes_before_a_prebuild_that_waited_longer() -> None:
    slots = BuildSlots(1, max_queued=4)
    holder = slots.acquire(PULL)
    prebuild = slots.acquire(PREBUILD)
    pull = slots.acquire(PULL)
    assert holder.called and not prebuild.called and not pull.called
    slots.release(PULL)
    assert pull.called and not prebuild.called
    slots.release(PULL)
    assert prebuild.called
    assert (slots.running, slots.queued) == (1, 0)


def test_a_prebuild_never_takes_the_last_free_slot() -> None:
    slots = BuildSlots(3, max_queued=4)
    prebuilds = [slots.acquire(PREBUILD) for _ in range(3)]
    assert granted(prebuilds) == [True, True, False]  # one slot stays free for a pull
    assert (slots.running, slots.queued) == (2, 1)
    pull = slots.acquire(PULL)
    assert pull.called  # a pull arriving while prebuilds run finds a slot at once
    slots.release(PULL)
    assert not prebuilds[2].called
    slots.release(PREBUILD)
    assert prebuilds[2].called


def test_with_one_slot_a_prebuild_may_take_it() -> None:
    slots = BuildSlots(1, max_queued=4)
    prebuild = slots.acquire(PREBUILD)
    assert prebuild.called
    pull = slots.acquire(PULL)
    assert not pull.called  # it waits behind the running prebuild only
    slots.release(PREBUILD)
    assert pull.called


def test_no_prebuild_starts_while_a_pull_waits() -> None:
    slots = BuildSlots(3, max_queued=4)
    pulls = [slots.acquire(PULL) for _ in range(4)]
    prebuild = slots.acquire(PREBUILD)
    slots.release(PULL)
    assert granted(pulls) == [True, True, True, True] and not prebuild.called
    slots.release(PULL)
    slots.release(PULL)
    assert prebuild.called and slots.running == 2  # a pull and the prebuild


def test_a_full_pull_queue_is_too_many_builds_but_prebuilds_still_queue() -> None:
    slots = BuildSlots(1, max_queued=2)
    slots.acquire(PULL)
    slots.acquire(PULL)
    slots.acquire(PULL)
    with pytest.raises(TooManyBuilds) as caught:
        slots.acquire(PULL)
    assert caught.value.retry_after > 0
    assert slots.queued == 2
    slots.acquire(PREBUILD)  # prebuilds wait behind every pull, outside the pull queue's bound
    assert slots.queued == 3


def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    slots = BuildSlots(1, max_queued=2)
    holder = slots.acquire(PULL)
    gone = slots.acquire(PULL)
    next_pull = slots.acquire(PULL)
    gone.cancel()
    failures: list[object] = []
    gone.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(CancelledError)  # type: ignore[attr-defined]
    assert slots.queued == 1
    slots.acquire(PULL)  # the queue has room again
    assert holder.called
    slots.release(PULL)
    assert next_pull.called and (slots.running, slots.queued) == (1, 1)


def test_each_waiter_is_told_the_kind_of_slot_it_holds() -> None:
    slots = BuildSlots(2, max_queued=2)
    kinds: list[str] = []
    slots.acquire(PULL).addCallback(kinds.append)
    slots.acquire(PREBUILD).addCallback(kinds.append)
    assert kinds == [PULL, PREBUILD]


def test_a_promoted_prebuild_waits_as_a_pull_and_holds_a_pulls_slot() -> None:
    slots = BuildSlots(2, max_queued=2)
    running = slots.acquire(PREBUILD)
    first, second = slots.acquire(PREBUILD), slots.acquire(PREBUILD)
    assert running.called and not first.called and not second.called  # the last slot is kept for pulls
    held: list[str] = []
    second.addCallback(held.append)
    slots.promote(second)  # a pull now waits for it: it takes the free slot at once
    assert held == [PULL] and not first.called
    slots.promote(running)  # already holding a slot: nothing changes
    assert (slots.running, slots.queued) == (2, 1)
    slots.release(PULL)
    assert not first.called  # the slot a pull left stays free for pulls
    slots.release(PREBUILD)
    assert first.called and (slots.running, slots.queued) == (1, 0)


def test_a_promoted_waiter_can_still_be_cancelled() -> None:
    slots = BuildSlots(1, max_queued=2)
    slots.acquire(PULL)
    waiter = slots.acquire(PREBUILD)
    slots.promote(waiter)
    waiter.cancel()
    waiter.addErrback(lambda failure: failure.trap(CancelledError))
    assert slots.queued == 0
    slots.release(PULL)
    assert slots.running == 0
