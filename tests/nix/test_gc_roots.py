"""GcRoots: fresh out-link paths, released with their `-<output>` siblings, cleared at start-up."""

from __future__ import annotations

import os
from pathlib import Path

from nixforge.nix.gc_roots import GcRoots


def link_to(path: str, target: Path) -> None:
    os.symlink(target, path)


def test_links_are_fresh_and_release_drops_a_link_with_its_other_outputs_only(tmp_path: Path) -> None:
    roots = GcRoots(str(tmp_path / "gcroots"))
    first, second = roots.new_link(), roots.new_link()
    assert first != second and os.path.dirname(first) == str(tmp_path / "gcroots")
    for path in (first, first + "-dev", first + "-man", second):
        link_to(path, tmp_path)
    assert len(roots.held()) == 4
    roots.release(first)
    assert roots.held() == [os.path.basename(second)]
    roots.release(first)  # twice is fine
    assert roots.held() == [os.path.basename(second)]


def test_clear_removes_what_a_previous_run_left_and_nothing_else(tmp_path: Path) -> None:
    roots = GcRoots(str(tmp_path))
    for path in (roots.new_link(), roots.new_link() + "-lib"):
        link_to(path, tmp_path / "gone")  # dangling, as after Nix collected the path
    (tmp_path / "unrelated").write_text("kept")
    assert roots.clear() == 2
    assert roots.held() == [] and (tmp_path / "unrelated").exists()
    assert GcRoots(str(tmp_path / "missing")).clear() == 0
