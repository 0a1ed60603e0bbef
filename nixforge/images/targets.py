"""How a repository name and a tag map to a flake attribute and a flake reference."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from attrs import frozen

from nixforge.errors import ManifestUnknown, NameUnknown

# One flake attribute: the name grammar's component without dots (Nix 2.8 can't quote attr paths).
_ATTRIBUTE = re.compile(r"[a-z0-9]+(?:(?:_|__|-+)[a-z0-9]+)*")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_GIT_HOSTED = ("github:", "gitlab:", "sourcehut:")


@frozen
class BuildTarget:
    """What to build for a repository.

    `package`: the attribute `<attribute>` (its `.image` if the flake has one, else its closure).
    `application`: `<attribute>.containers`, serving `<image_file>` from its output.
    """

    name: str
    kind: str
    attribute: str
    image_file: str | None = None


def _attribute(text: str, name: str) -> str:
    if not _ATTRIBUTE.fullmatch(text):
        raise NameUnknown(
            "repository name does not map to a flake attribute",
            {"name": name, "hint": "use <pkg>, packages/<pkg> or applications/<app>/<image>"},
        )
    return text


def target_for(name: str) -> BuildTarget:
    """Map a validated repository name to its build target, or raise NameUnknown."""
    parts = name.split("/")
    if len(parts) == 1:
        return BuildTarget(name, "package", _attribute(parts[0], name))
    if len(parts) == 2 and parts[0] == "packages":
        return BuildTarget(name, "package", _attribute(parts[1], name))
    if len(parts) == 3 and parts[0] == "applications":
        image = _attribute(parts[2], name)
        return BuildTarget(name, "application", _attribute(parts[1], name), image + ".tar.gz")
    raise NameUnknown(
        "repository name does not map to a flake attribute",
        {"name": name, "hint": "use <pkg>, packages/<pkg> or applications/<app>/<image>"},
    )


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
