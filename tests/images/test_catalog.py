"""FlakeCatalog and Catalog: what the flake offers at a revision, one `nix eval` per revision, checked per name."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from nixforge.errors import BuildFailed, NameUnknown
from nixforge.images.catalog import CATALOG_EXPRESSION, RETRY_AFTER, Catalog, FlakeCatalog, catalog_from
from nixforge.images.targets import target_for
from nixforge.nix.client import LineSink, NixError

from .fakes import result_of

OFFER: dict[str, Any] = {"hello": None, "app1": ["web.tar.gz", "db.tar.gz"], "app2": True, "lib": None}


class EvalNix:
    """Answers the catalog evaluation with `answer` (or fails with `error`), recording each call."""

    def __init__(self) -> None:
        self.answer: object = dict(OFFER)
        self.error: Exception | None = None
        self.asked: list[tuple[str, str | None]] = []
        self.gate: Deferred[None] | None = None

    async def eval_json(self, installable: str, apply: str | None = None, timeout: float | None = None,
                        lines: LineSink = None) -> object:
        self.asked.append((installable, apply))
        if self.gate is not None:
            await self.gate
        if self.error is not None:
            raise self.error
        return self.answer


def make_catalog() -> tuple[FlakeCatalog, EvalNix, Clock]:
    nix, clock = EvalNix(), Clock()
    return FlakeCatalog(nix, "x86_64-linux", clock, 60.0), nix, clock


def at(catalog: FlakeCatalog, locked: str) -> Catalog | None:
    return result_of(ensureDeferred(catalog.at(locked)))


def test_a_listed_package_passes_and_an_unlisted_one_is_name_unknown() -> None:
    catalog = catalog_from("path:/f", OFFER)
    catalog.check(target_for("hello"))
    catalog.check(target_for("packages/lib"))
    with pytest.raises(NameUnknown) as caught:
        catalog.check(target_for("nosuch"))
    assert caught.value.detail == {"name": "nosuch"}


def test_an_application_with_entries_offers_exactly_its_entries() -> None:
    catalog = catalog_from("path:/f", OFFER)
    catalog.check(target_for("applications/app1/web"))
    catalog.check(target_for("applications/app1/db"))
    with pytest.raises(NameUnknown) as caught:
        catalog.check(target_for("applications/app1/nope"))
    assert caught.value.detail == {"name": "applications/app1/nope", "file": "nope.tar.gz",
                                   "images": ["db.tar.gz", "web.tar.gz"]}


def test_an_application_without_entries_offers_any_image_and_one_without_containers_none() -> None:
    catalog = catalog_from("path:/f", OFFER)
    catalog.check(target_for("applications/app2/anything"))  # known only once its containers are built
    with pytest.raises(NameUnknown) as caught:
        catalog.check(target_for("applications/hello/web"))  # hello has no containers
    assert "has no containers" in caught.value.message
    with pytest.raises(NameUnknown):
        catalog.check(target_for("applications/nosuch/web"))


def test_names_list_packages_and_the_images_of_entries() -> None:
    assert catalog_from("path:/f", OFFER).names() == [
        "app1", "app2", "applications/app1/db", "applications/app1/web", "hello", "lib"]


def test_an_answer_that_is_not_an_attribute_set_is_a_build_failure() -> None:
    with pytest.raises(BuildFailed):
        catalog_from("path:/f", ["hello"])


def test_one_evaluation_per_revision() -> None:
    catalog, nix, _ = make_catalog()
    first = at(catalog, "github:o/r?rev=1")
    assert first is not None and first.locked == "github:o/r?rev=1"
    assert at(catalog, "github:o/r?rev=1") is first
    assert catalog.cached("github:o/r?rev=1") is first
    nix.answer = {"hello": None, "new-tool": None}
    second = at(catalog, "github:o/r?rev=2")
    assert second is not None and "new-tool" in second.names() and "new-tool" not in first.names()
    assert nix.asked == [("github:o/r?rev=1#packages.x86_64-linux", CATALOG_EXPRESSION),
                         ("github:o/r?rev=2#packages.x86_64-linux", CATALOG_EXPRESSION)]
    assert catalog.evaluations == 2


def test_concurrent_asks_of_a_revision_share_one_evaluation() -> None:
    catalog, nix, _ = make_catalog()
    nix.gate = Deferred()
    asks = [ensureDeferred(catalog.at("github:o/r?rev=1")) for _ in range(3)]
    nix.gate.callback(None)
    assert len({id(result_of(ask)) for ask in asks}) == 1
    assert len(nix.asked) == 1


def test_a_failed_evaluation_is_none_and_retried_after_30_seconds() -> None:
    catalog, nix, clock = make_catalog()
    nix.error = NixError("error: flake 'github:o/r' does not provide attribute 'packages'", 1, [])
    assert at(catalog, "github:o/r?rev=1") is None
    clock.advance(RETRY_AFTER - 1)
    assert at(catalog, "github:o/r?rev=1") is None
    assert len(nix.asked) == 1  # not asked of Nix again meanwhile
    nix.error = None
    clock.advance(1)
    assert at(catalog, "github:o/r?rev=1") is not None
    assert len(nix.asked) == 2
    assert RETRY_AFTER == 30


def test_a_bad_answer_counts_as_a_failure_and_forget_failures_retries_at_once() -> None:
    catalog, nix, _ = make_catalog()
    nix.answer = "not an attribute set"
    assert at(catalog, "github:o/r?rev=1") is None
    nix.answer = dict(OFFER)
    assert at(catalog, "github:o/r?rev=1") is None
    catalog.forget_failures()  # the refresh webhook
    assert at(catalog, "github:o/r?rev=1") is not None
    assert len(nix.asked) == 2
