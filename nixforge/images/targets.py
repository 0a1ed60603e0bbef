"""How a repository name and a tag map to a flake attribute and a flake reference."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from attrs import frozen

from nixforge.errors import ManifestUnknown, NameUnknown
from nixforge.nix.commands import ATTRIBUTE_NAME, attribute_path

_COMMIT = re.compile(r"[0-9a-f]{40}")
_GIT_HOSTED = ("github:", "gitlab:", "sourcehut:")
# The words of the name scheme itself: alone, `packages` and `applications` name no package.
_RESERVED = frozenset({"packages", "applications"})
_HINT = "use <pkg>, packages/<pkg> or applications/<app>/<image>"


@frozen
class BuildTarget:
    """What to build for a repository.

    `package`: the attribute `<attribute>` (its `.image` if the flake has one, else its closure).
    `application`: from `<attribute>.containers`, the image `<image_file>`: the entry
    `containers.entries."<image_file>"` alone when the containers carry `entries`, else the file of
    that name in the built `containers` output.
    """

    name: str
    kind: str
    attribute: str
    image_file: str | None = None

    def path(self, *more: str) -> str:
        """The attribute path of the target, or of an attribute below it (`path("image")`)."""
        return attribute_path(self.attribute, *more)

    def entry_path(self) -> str:
        """`<app>.containers.entries."<img>.tar.gz"`: one image of an application."""
        assert self.image_file is not None
        return self.path("containers", "entries", self.image_file)


def _attribute(text: str, name: str) -> str:
    if not ATTRIBUTE_NAME.fullmatch(text) or name in _RESERVED:
        raise NameUnknown("repository name does not map to a flake attribute", {"name": name, "hint": _HINT})
    return text


def is_package_name(text: str) -> bool:
    """Tell whether a flake attribute name can be pulled as the repository `<text>`."""
    return bool(ATTRIBUTE_NAME.fullmatch(text)) and text not in _RESERVED


def target_for(name: str) -> BuildTarget:
    """Map a validated repository name to its build target, or raise NameUnknown (no Nix asked)."""
    parts = name.split("/")
    if len(parts) == 1:
        return BuildTarget(name, "package", _attribute(parts[0], name))
    if len(parts) == 2 and parts[0] == "packages":
        return BuildTarget(name, "package", _attribute(parts[1], name))
    if len(parts) == 3 and parts[0] == "applications":
        image = _attribute(parts[2], name)
        return BuildTarget(name, "application", _attribute(parts[1], name), image + ".tar.gz")
    raise NameUnknown("repository name does not map to a flake attribute", {"name": name, "hint": _HINT})


def is_immutable(tag: str) -> bool:
    """A full commit hash names content that never changes; every other tag can move."""
    return bool(_COMMIT.fullmatch(tag))


def flake_ref_for(flake: str, tag: str) -> str:
    """The flake reference a tag builds from: `latest` is the flake itself, others are git refs.

    The tag grammar ([A-Za-z0-9_][A-Za-z0-9._-]*) cannot carry `/`, `?`, `#` or `&`, so it cannot
    change which flake is fetched beyond picking the ref.
    """
    if tag == "latest":
        return flake
    base, _, query = flake.partition("?")
    if base.startswith(_GIT_HOSTED):
        scheme, _, path = base.partition(":")
        owner_repo = "/".join(path.split("/")[:2])
        params = [(k, v) for k, v in parse_qsl(query) if k not in ("ref", "rev")]
        suffix = "?" + urlencode(params) if params else ""
        return f"{scheme}:{owner_repo}/{tag}{suffix}"
    if base.startswith("git+"):
        params = [(k, v) for k, v in parse_qsl(query) if k not in ("ref", "rev")]
        params.append(("rev" if is_immutable(tag) else "ref", tag))
        return f"{base}?{urlencode(params)}"
    raise ManifestUnknown(
        "unknown tag: this flake reference has only the tag 'latest'",
        {"tag": tag, "flake": flake},
    )
