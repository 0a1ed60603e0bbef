"""BuildBook: the builds view, bounded logs, following a live log, scrubbing; and its routes in memory."""

from __future__ import annotations

import json

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from nixforge.api import RegistryApi
from nixforge.api.builds import BuildBook
from nixforge.images.build_events import BuildStart, IBuildObserver

from .fake_images import FakeImageService, StubClient


def start(build_id: str, name: str = "hello") -> BuildStart:
    return BuildStart(build_id, name, "latest", "path:/home/alice/flake?narHash=x", "abc", 1_800_000_000.0, 0.5)


def test_the_book_is_an_observer() -> None:
    assert verifyObject(IBuildObserver, BuildBook())


def test_builds_are_listed_newest_first_and_scrubbed() -> None:
    book = BuildBook()
    book.build_started(start("one"))
    book.build_started(start("two", "chatty"))
    book.build_phase("two", "build", 1_800_000_001.0)
    book.build_finished("one", "failure", 1_800_000_002.0, "nix build failed: see /home/alice/flake/log")
    two, one = book.builds()
    assert (two["id"], two["state"], two["phase"], two["finished"]) == ("two", "running", "build", None)
    assert one == {"id": "one", "name": "hello", "tag": "latest", "locked": "path:<host path>", "revision": "abc",
                   "phase": "done", "state": "failure", "started": "2027-01-15T08:00:00Z",
                   "finished": "2027-01-15T08:00:02Z", "error": "nix build failed: see <host path>"}


def test_only_the_last_finished_builds_are_kept_but_every_running_one() -> None:
    book = BuildBook(keep=2)
    for number in range(5):
        book.build_started(start(f"b{number}"))
    for number in (0, 1, 2):
        book.build_finished(f"b{number}", "success", 1_800_000_010.0, None)
    assert [build["id"] for build in book.builds()] == ["b4", "b3", "b2", "b1"]
    assert not book.has("b0")


def test_a_log_keeps_its_last_bytes_and_says_what_it_dropped() -> None:
    book = BuildBook(max_log_bytes=20)
    book.build_started(start("b"))
    for number in range(6):
        book.build_line("b", f"line {number}")  # 7 bytes each with its newline
    seen: list[str] = []
    book.follow("b", seen.append)
    assert seen == ["[nixforge: 4 earlier lines dropped, the log keeps 20 bytes]", "line 4", "line 5"]


def test_following_gets_the_past_then_live_lines_until_the_end() -> None:
    book = BuildBook()
    book.build_started(start("b"))
    book.build_line("b", "first, by /home/alice/secret")
    seen: list[str] = []
    ended = book.follow("b", seen.append)
    assert ended is not None and not ended.called
    book.build_line("b", "second https://user:token@example.com/x?sig=1")
    assert seen == ["first, by <host path>", "second https://<credentials>@example.com/x"]
    book.build_finished("b", "timeout", 1_800_000_600.0, "build timed out")
    assert ended.called and seen[-1] == "[nixforge: build timeout: build timed out]"
    assert book.follow("nope", seen.append) is None


def test_a_follower_that_leaves_gets_no_more_lines() -> None:
    book = BuildBook()
    book.build_started(start("b"))
    seen: list[str] = []
    ended = book.follow("b", seen.append)
    assert ended is not None
    ended.addErrback(lambda failure: failure.trap(CancelledError))
    ended.cancel()
    book.build_line("b", "after")
    assert seen == []


def test_routes_serve_the_list_and_the_log(images: FakeImageService, clock: Clock) -> None:
    book = BuildBook()
    book.build_started(start("b"))
    book.build_line("b", "hello> building")
    book.build_finished("b", "success", 1_800_000_003.0, None)
    client = StubClient(RegistryApi(images, clock, builds=book).resource(), clock)
    response, body = client.request("GET", "/-/builds")
    assert response.code == 200 and [build["id"] for build in json.loads(body)["builds"]] == ["b"]
    response, body = client.request("GET", "/-/builds/b/log")
    assert response.code == 200 and response.headers.getRawHeaders("Content-Type") == ["text/plain; charset=utf-8"]
    assert body == b"hello> building\n[nixforge: build success]\n"
    response, body = client.request("GET", "/-/builds/zz/log")
    assert response.code == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
