"""GC keeps what `keep_also` names (the Nix cache's NARs, nix/ images) though no tag record does."""

from __future__ import annotations

from pathlib import Path

from tests.store.test_gc import Fixture, blobs_of


def test_blobs_named_by_keep_also_survive_and_the_rest_go(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    kept = f.image(b"layer-a")
    f.tag("a", kept)
    nar, _ = f.store.put(b"a NAR the cache serves")
    stale, _ = f.store.put(b"a NAR of a path no longer served")
    f.gc.keep_also = lambda: [nar]
    f.gc.collect()
    assert f.blobs() == blobs_of(kept) | {nar}
    assert stale not in f.blobs()
