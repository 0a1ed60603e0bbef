"""PullTimes.take: another set of pull times merged in, the later time of each pair winning."""

from __future__ import annotations

from nixforge.store.pull_times import PullTimes
from nixforge.store.records import MemoryRecordStore


def test_take_keeps_the_later_time_of_each_pair_and_saves_the_merge() -> None:
    mine, theirs = PullTimes(MemoryRecordStore()), PullTimes(MemoryRecordStore())
    mine.record("hello", "latest", 50.0)
    mine.record("tool-a", "latest", 10.0)
    theirs.record("hello", "latest", 40.0)
    theirs.record("tool-a", "latest", 20.0)
    theirs.record("tool-b", "v1", 5.0)
    mine.take(theirs)
    assert (mine.get("hello", "latest"), mine.get("tool-a", "latest"), mine.get("tool-b", "v1")) == (50.0, 20.0, 5.0)
    assert mine.save() and PullTimes(mine.records).get("tool-b", "v1") == 5.0
