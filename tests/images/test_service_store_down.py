"""An unreachable store fails a pull with StoreUnavailable (503); it is never taken for an incomplete image."""

from __future__ import annotations

from twisted.python.failure import Failure

from nixforge.errors import StoreUnavailable
from tests.images.test_service import make_service, result_of


def test_a_pull_whose_manifests_must_be_read_fails_at_once_without_building() -> None:
    service, builder, _ = make_service(cache_size=1)
    for name in ["a", "b", "c"]:  # a's manifests leave the memory cache
        service.resolve_tag(name, "latest")
        builder.release()
    builds = len(builder.calls)

    def unreachable(digest: str) -> bytes:
        raise StoreUnavailable("the object store is unreachable; retry")

    service.store.read = unreachable  # type: ignore[method-assign]
    outcome = result_of(service.resolve_tag("a", "latest"))
    assert isinstance(outcome, Failure) and outcome.check(StoreUnavailable)
    assert len(builder.calls) == builds  # no rebuild was started
    assert result_of(service.resolve_tag("c", "latest")).oci.digest == service.index.get("c", "latest").oci_digest
