"""The web pages' templates as twisted.web.template Elements: every value goes in through a slot, escaped."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest, ITemplateLoader
from twisted.web.template import Element, Tag, TagLoader, XMLFile, renderer

from nixforge.api.ui_facts import Image, Overview, StoredTag, StoreUsage

TEMPLATES = files("nixforge.api") / "ui_templates"
MAX_REASON_LINES = 10


def _loader(name: str) -> XMLFile:
    return XMLFile(FilePath(str(TEMPLATES / name)))


def when(seconds: float | None) -> str:
    """A time as `2026-12-05 14:03:12 UTC`, or `never`."""
    if seconds is None:
        return "never"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pulled_text(seconds: float | None) -> str:
    """When a tag was last pulled; the pull that built it does not count (as for GC)."""
    return "not since it was built" if seconds is None else when(seconds)


def iso_time(text: object) -> str:
    """An RFC 3339 time from `/-/builds` (`…Z`) shown as `when` shows times; `-` for none."""
    if not isinstance(text, str):
        return "-"
    try:
        return when(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return text


def size(count: int) -> str:
    """A byte count for people: `812 B`, `3.4 MiB`."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short(digest: str) -> str:
    """`sha256:0123456789ab…`."""
    return digest[:19] + "…" if len(digest) > 19 else digest


def pull_command(host: str, name: str, tag: str = "latest") -> str:
    """The podman command that pulls name:tag from this registry."""
    return f"podman pull {host}/{name}:{tag}"


def store_text(store: StoreUsage) -> str:
    """`1.2 GiB in 340 blobs, of a 10.0 GiB cap (12%)`."""
    text = f"{size(store.bytes)} in {store.blobs} blobs"
    if store.cap is None:
        return text + ", no cap"
    return f"{text}, of a {size(store.cap)} cap ({100 * store.bytes // max(store.cap, 1)}%)"


def failure_text(build: dict[str, Any], lines: list[str]) -> str:
    """Why a build failed: its error and Nix's `error:` lines from the (scrubbed) log; empty if it did not."""
    if not build.get("error"):
        return ""
    nix_errors = [line for line in lines if line.startswith("error:")][-MAX_REASON_LINES:]
    return "\n".join([str(build["error"]), *nix_errors])


class Layout(Element):
    """The page shell: head (own stylesheet and script only), header, the page's content, footer."""

    loader = _loader("layout.xml")

    def __init__(self, title: str, content: Element) -> None:
        super().__init__()
        self._title = title
        self._content = content

    @renderer
    def content(self, request: IRequest, tag: Tag) -> Tag:
        """The page itself inside <main>."""
        return tag(self._content)

    @renderer
    def shell(self, request: IRequest, tag: Tag) -> Tag:
        """The title."""
        return tag.fillSlots(title=self._title)


class Message(Element):
    """A heading and one sentence: not found, turned off."""

    loader = _loader("message.xml")

    def __init__(self, heading: str, message: str) -> None:
        super().__init__()
        self._heading, self._message = heading, message

    @renderer
    def page(self, request: IRequest, tag: Tag) -> Tag:
        """Fill the heading and the message."""
        return tag.fillSlots(heading=self._heading, message=self._message)


class Home(Element):
    """`/`: the flake, the catalog with pull commands, what is stored, the builds, the store."""

    loader = _loader("home.xml")

    def __init__(self, overview: Overview, host: str) -> None:
        super().__init__()
        self._o, self._host = overview, host

    @renderer
    def page(self, request: IRequest, tag: Tag) -> Tag:
        """The page-wide slots."""
        return tag.fillSlots(flake=self._o.flake, store_text=store_text(self._o.store))

    @renderer
    def locked(self, request: IRequest, tag: Tag) -> Tag:
        """The locked reference `latest` resolved to, or why there is none yet."""
        if self._o.locked is None:
            return tag.clear()("not resolved yet (the first pull or catalog listing resolves it)")
        return tag.fillSlots(locked=self._o.locked, revision=self._o.revision or "")

    @renderer
    def resolved(self, request: IRequest, tag: Tag) -> Tag:
        """When `latest` was resolved."""
        if self._o.resolved is None:
            return tag.clear()("never")
        iso = datetime.fromtimestamp(self._o.resolved, UTC).isoformat(timespec="seconds")
        return tag.fillSlots(iso=iso, text=when(self._o.resolved))

    def _names(self) -> list[str]:
        names = set(self._o.catalog or ()) | {stored.name for stored in self._o.stored}
        return sorted(names)

    @renderer
    def catalog_note(self, request: IRequest, tag: Tag) -> Tag | str:
        """Say where the list comes from, or why it is short."""
        if self._o.catalog is None:
            return tag("The flake's catalog has not been evaluated yet (GET /v2/_catalog evaluates it); "
                       "these are the images built so far.")
        return tag("Every image the flake offers at the revision above. The first pull of one builds it.")

    @renderer
    def catalog_table(self, request: IRequest, tag: Tag) -> Tag | str:
        """The table, when there is anything to list."""
        return tag if self._names() else ""

    @renderer
    def catalog_rows(self, request: IRequest, tag: Tag) -> Iterator[Tag]:
        """One row per image: its page and its pull command."""
        for name in self._names():
            yield tag.clone().fillSlots(name=name, href=f"/ui/{name}", pull=pull_command(self._host, name))

    @renderer
    def no_stored(self, request: IRequest, tag: Tag) -> Tag | str:
        """Said when nothing is stored."""
        return "" if self._o.stored else tag

    @renderer
    def stored_table(self, request: IRequest, tag: Tag) -> Tag | str:
        """The table of stored tags, when there are some."""
        return tag if self._o.stored else ""

    @renderer
    def stored_rows(self, request: IRequest, tag: Tag) -> Iterator[Tag]:
        """One row per stored tag."""
        for stored in self._o.stored:
            yield tag.clone().fillSlots(
                name=f"{stored.name}:{stored.tag}", href=f"/ui/{stored.name}", digest=stored.oci_digest,
                short=short(stored.oci_digest), size=size(stored.size), built=when(stored.built),
                pulled=pulled_text(stored.pulled))

    @renderer
    def store_meter(self, request: IRequest, tag: Tag) -> Tag | str:
        """A meter of the store against its cap (none without a cap)."""
        store = self._o.store
        if store.cap is None:
            return ""
        return tag(store_text(store), value=str(store.bytes), max=str(store.cap), high=str(store.cap * 9 // 10))

    @renderer
    def no_running(self, request: IRequest, tag: Tag) -> Tag | str:
        """Said when nothing builds."""
        return "" if self._o.running else tag

    @renderer
    def running(self, request: IRequest, tag: Tag) -> Iterator[Tag]:
        """One item per running build, linking its page."""
        for build in self._o.running:
            yield tag.clone().fillSlots(href=f"/ui/builds/{build['id']}", name=f"{build['name']}:{build['tag']}",
                                        phase=str(build["phase"]), started=iso_time(build["started"]))

    @renderer
    def no_failures(self, request: IRequest, tag: Tag) -> Tag | str:
        """Said when no kept build failed."""
        return "" if self._o.failures else tag

    @renderer
    def failures(self, request: IRequest, tag: Tag) -> Iterator[Tag]:
        """One item per failed build, linking its page and log."""
        for build in self._o.failures:
            reason = str(build.get("error") or "").splitlines()
            yield tag.clone().fillSlots(href=f"/ui/builds/{build['id']}", name=f"{build['name']}:{build['tag']}",
                                        outcome=str(build["state"]), finished=iso_time(build["finished"]),
                                        reason=reason[0] if reason else "no reason given")


class _ImageSection(Element):
    """One image of a tag: its layers with their store paths, and its SBOMs."""

    def __init__(self, loader: ITemplateLoader, image: Image, name: str) -> None:
        super().__init__(loader)
        self._image, self._name = image, name

    @renderer
    def image_heading(self, request: IRequest, tag: Tag) -> Tag:
        """The image's digest and platform."""
        platform = f"({self._image.platform})" if self._image.platform else ""
        return tag.fillSlots(digest=self._image.digest, platform=platform, config=self._image.config,
                             size=size(self._image.size))

    @renderer
    def layers(self, request: IRequest, tag: Tag) -> Iterator[Element]:
        """One row per layer."""
        for layer in self._image.layers:
            row = tag.clone().fillSlots(digest=layer.digest, short=short(layer.digest), size=size(layer.size),
                                        note=layer.note)
            yield _PathList(TagLoader(row), layer.paths or ())

    @renderer
    def no_sbom(self, request: IRequest, tag: Tag) -> Tag | str:
        """Said when the image has no SBOM."""
        return "" if self._image.sboms else tag

    @renderer
    def sboms(self, request: IRequest, tag: Tag) -> Iterator[Tag]:
        """Links to each SBOM blob and to the referrers listing."""
        for artifact, blob in self._image.sboms:
            yield tag.clone().fillSlots(blob_href=f"/v2/{self._name}/blobs/{blob}", artifact=artifact,
                                        referrers_href=f"/v2/{self._name}/referrers/{self._image.digest}")


class _PathList(Element):
    """A layer row's list of store paths."""

    def __init__(self, loader: ITemplateLoader, paths: tuple[str, ...]) -> None:
        super().__init__(loader)
        self._paths = paths

    @renderer
    def paths(self, request: IRequest, tag: Tag) -> Iterator[Tag]:
        """One item per store path."""
        for path in self._paths:
            yield tag.clone().fillSlots(path=path)


class _TagSection(Element):
    """One stored tag of a repository: both digests, times, size, and its images."""

    def __init__(self, loader: ITemplateLoader, stored: StoredTag) -> None:
        super().__init__(loader)
        self._stored = stored

    @renderer
    def images(self, request: IRequest, tag: Tag) -> Iterator[Element]:
        """One section per image (one per platform for an index)."""
        for image in self._stored.images:
            yield _ImageSection(TagLoader(tag.clone()), image, self._stored.name)


class Package(Element):
    """`/ui/<name>`: the pull command, and each stored tag with its digests, images, layers and SBOMs."""

    loader = _loader("package.xml")

    def __init__(self, name: str, stored: list[StoredTag], host: str) -> None:
        super().__init__()
        self._name, self._stored, self._host = name, stored, host

    @renderer
    def page(self, request: IRequest, tag: Tag) -> Tag:
        """The name and its pull command."""
        return tag.fillSlots(name=self._name, pull=pull_command(self._host, self._name))

    @renderer
    def not_built(self, request: IRequest, tag: Tag) -> Tag | str:
        """Said when no tag of the name is stored."""
        return "" if self._stored else tag

    @renderer
    def tags(self, request: IRequest, tag: Tag) -> Iterator[Element]:
        """One section per stored tag."""
        for stored in self._stored:
            section = tag.clone().fillSlots(
                name=stored.name, tag=stored.tag, oci=stored.oci_digest, docker=stored.docker_digest,
                size=size(stored.size), built=when(stored.built), pulled=pulled_text(stored.pulled))
            yield _TagSection(TagLoader(section), stored)


class Build(Element):
    """`/ui/builds/<id>`: phase, times, outcome, the failure reason and the log (followed live by ui.js)."""

    loader = _loader("build.xml")

    def __init__(self, build: dict[str, Any], lines: list[str]) -> None:
        super().__init__()
        self._build, self._lines = build, lines

    @renderer
    def page(self, request: IRequest, tag: Tag) -> Tag:
        """The build's facts."""
        build = self._build
        return tag.fillSlots(
            id=str(build["id"]), name=str(build["name"]), tag=str(build["tag"]), href=f"/ui/{build['name']}",
            state=str(build["state"]), phase=str(build["phase"]), started=iso_time(build["started"]),
            finished=iso_time(build["finished"]), locked=str(build["locked"]),
            log_href=f"/-/builds/{build['id']}/log", error=failure_text(build, self._lines))

    @renderer
    def error_section(self, request: IRequest, tag: Tag) -> Tag:
        """The failure reason; hidden (for ui.js to fill in) while there is none."""
        return tag if self._build["error"] else tag(hidden="")

    @renderer
    def log(self, request: IRequest, tag: Tag) -> Tag:
        """The log so far; while the build runs, ui.js follows `/-/builds/<id>/log` from here."""
        tag("\n".join(self._lines))
        if self._build["state"] == "running":
            tag(**{"data-follow": f"/-/builds/{self._build['id']}/log", "data-builds": "/-/builds",
                   "data-build": str(self._build["id"])})
        return tag
