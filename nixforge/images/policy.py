"""AccessPolicy: which repositories and which tags the registry serves, asked before anything is planned.

Two rules, both from the settings:

- `packages` (NIXFORGE_PACKAGES): globs over repository names. `packages/<pkg>` and `<pkg>` are
  one image, so a pattern that matches either form allows both. Any other name is NAME_UNKNOWN.
- the revision rule: `latest` (the configured flake ref) is always served. A tag that names a branch
  or a git tag is served when it matches a glob of `refs` (NIXFORGE_REFS). A 40-hex commit tag
  depends on `commit_tags` (NIXFORGE_COMMIT_TAGS): `any` serves every commit, `none` none, and
  `known` only a revision nixforge itself locked the flake to while serving `latest` or an allowed
  branch or tag (kept in an ILockedRevisions, so it holds after a restart).

Locked revisions are per flake, not per repository: a revision is a commit of the whole flake,
so a commit locked while serving one package may be pulled for every package of that flake.
Globs are fnmatch-style and case-sensitive; `*` also matches `/`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from attrs import define

from nixforge.errors import ManifestUnknown, NameUnknown
from nixforge.images.targets import is_immutable
from nixforge.references import COMMIT_TAG_MODES
from nixforge.store.interfaces import ILockedRevisions

_PACKAGES_PREFIX = "packages/"


def _matches(text: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(text, pattern) for pattern in patterns)


@define(eq=False)
class AccessPolicy:
    """The registry's answer to "may this name, this tag, be served?"; blocking only in `remember_lock`."""

    flake: str
    revisions: ILockedRevisions
    packages: tuple[str, ...] = ("*",)
    refs: tuple[str, ...] = ("*",)
    commit_tags: str = "known"

    def __attrs_post_init__(self) -> None:
        if self.commit_tags not in COMMIT_TAG_MODES:
            raise ValueError(f"commit_tags must be one of {', '.join(COMMIT_TAG_MODES)}")

    # -- names --------------------------------------------------------------------------------

    def allows_name(self, name: str) -> bool:
        """Tell whether the repository `name` may be served (`packages/<pkg>` counts as `<pkg>`)."""
        forms = {name}
        if name.startswith(_PACKAGES_PREFIX):
            forms.add(name[len(_PACKAGES_PREFIX):])
        elif "/" not in name:
            forms.add(_PACKAGES_PREFIX + name)
        return any(_matches(form, self.packages) for form in forms)

    def check_name(self, name: str) -> None:
        """Raise NameUnknown unless the repository `name` may be served."""
        if not self.allows_name(name):
            raise NameUnknown("repository not served by this registry",
                              {"name": name, "refused_by": "NIXFORGE_PACKAGES"})

    # -- tags ---------------------------------------------------------------------------------

    def refusal(self, tag: str) -> dict[str, str] | None:
        """Why `tag` may not be served (the detail of its 404), or None when it may."""
        if tag == "latest":
            return None
        if not is_immutable(tag):
            if _matches(tag, self.refs):
                return None
            return {"tag": tag, "refused_by": "NIXFORGE_REFS",
                    "reason": "this branch or git tag is not one the registry serves"}
        if self.commit_tags == "any":
            return None
        if self.commit_tags == "none":
            return {"tag": tag, "refused_by": "NIXFORGE_COMMIT_TAGS",
                    "reason": "commit tags are not served (NIXFORGE_COMMIT_TAGS=none)"}
        if any(self._ref_allowed(ref) for ref in self.revisions.refs(self.flake, tag)):
            return None
        return {"tag": tag, "refused_by": "NIXFORGE_COMMIT_TAGS",
                "reason": "only revisions this registry locked from latest or an allowed branch or tag "
                          "are served (NIXFORGE_COMMIT_TAGS=known); pull that branch or tag first"}

    def allows_tag(self, tag: str) -> bool:
        """Tell whether `tag` may be served."""
        return self.refusal(tag) is None

    def check_tag(self, tag: str) -> None:
        """Raise ManifestUnknown, saying which setting refused it, unless `tag` may be served."""
        reason = self.refusal(tag)
        if reason is not None:
            raise ManifestUnknown("tag not served by this registry", reason)

    def _ref_allowed(self, ref: str) -> bool:
        return ref == "latest" or (not is_immutable(ref) and _matches(ref, self.refs))

    # -- locked revisions ---------------------------------------------------------------------

    def vouches_for_locks_of(self, tag: str) -> bool:
        """Tell whether a revision locked for `tag` is recorded: yes for `latest`, branches and git tags.

        A commit tag's lock is never recorded: it would let `any` today turn into `known` tomorrow.
        """
        return not is_immutable(tag)

    def remember_lock(self, tag: str, revision: str) -> None:
        """Durably record that `tag` locked the flake to `revision`. Blocks: run it in a thread."""
        if self.vouches_for_locks_of(tag) and is_immutable(revision):
            self.revisions.record(self.flake, revision, tag)
