"""GcRoots: the out-links `nix build --out-link` leaves in the data dir, one per build, held until stored.

Nix treats each link as an indirect GC root (it records it under /nix/var/nix/gcroots/auto), so
`nix-collect-garbage` or `nix store gc` cannot delete a build output between `nix build` and the
moment its image is stored. Once the image is stored (or the build failed or timed out) the links
are removed, and Nix's next GC may take the output. Links left by a crash are removed at start-up.
"""

from __future__ import annotations

import os
import secrets

from attrs import define


@define(eq=False)
class GcRoots:
    """Hand out fresh out-link paths in `directory`, and remove them (with their `-<output>` siblings)."""

    directory: str

    def new_link(self) -> str:
        """A fresh, unused path for `nix build --out-link`; the directory is made if needed."""
        os.makedirs(self.directory, exist_ok=True)
        return os.path.join(self.directory, "build-" + secrets.token_hex(8))

    def release(self, link: str) -> None:
        """Remove `link` and every `link-<output>` Nix made beside it (missing ones are fine)."""
        base = os.path.basename(link)
        for entry in self._entries():
            if entry == base or entry.startswith(base + "-"):
                _unlink(os.path.join(self.directory, entry))

    def held(self) -> list[str]:
        """The links held now (names in the directory), sorted."""
        return sorted(self._entries())

    def clear(self) -> int:
        """Remove every link (start-up: builds of a previous run are over); return how many went."""
        entries = self._entries()
        for entry in entries:
            _unlink(os.path.join(self.directory, entry))
        return len(entries)

    def _entries(self) -> list[str]:
        try:
            return [entry for entry in os.listdir(self.directory) if entry.startswith("build-")]
        except FileNotFoundError:
            return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
