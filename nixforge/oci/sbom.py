"""An SPDX 2.3 JSON bill of materials of an image, from the Nix closure it was made of (spdx-tools).

One SPDX package per store path: its name and version split from the store path name (as Nix's
`builtins.parseDrvName` splits them), its `narHash` as a SHA256 checksum, a `DEPENDS_ON` relationship
per reference, and the document `DESCRIBES` the image's own package, which alone carries the licenses
and homepage the probe read from `meta` (NOASSERTION wherever Nix said nothing).

Deterministic: no wall-clock time (`created` is given: the locked revision's date), a namespace
derived from the content, packages and relationships sorted, JSON with sorted keys.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from attrs import frozen
from license_expression import get_spdx_licensing
from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
from spdx_tools.spdx.model import (
    Actor,
    ActorType,
    Checksum,
    ChecksumAlgorithm,
    CreationInfo,
    Document,
    Package,
    Relationship,
    RelationshipType,
    SpdxNoAssertion,
)

from nixforge.oci import media_types as mt
from nixforge.oci.documents import canonical_json
from nixforge.oci.nar_hash import nar_hash_hex

SPDX_MEDIA_TYPE = mt.SPDX_JSON
TOOL = "nixforge-0.1.0"
NAMESPACE_BASE = "https://nixforge.invalid/spdx/"
# parseDrvName: the version starts at the first dash followed by a character that is not a letter.
_VERSION_START = re.compile(r"-(?=[^A-Za-z])")
_NOT_ID = re.compile(r"[^A-Za-z0-9.-]")


class ClosurePath(Protocol):
    """One store path of a closure, as `nixforge.nix.commands.StorePathInfo` has it."""

    @property
    def path(self) -> str: ...

    @property
    def references(self) -> tuple[str, ...]: ...

    @property
    def nar_hash(self) -> str: ...


@frozen
class PackageFacts:
    """What the plan's probe read of the image's own package (None where Nix said nothing)."""

    pname: str | None = None
    version: str | None = None
    licenses: tuple[str, ...] | None = None
    homepage: str | None = None

    @classmethod
    def from_probe(cls, answer: dict[str, Any]) -> PackageFacts:
        """The facts in the plan's package probe (`pname`, `version`, `licenses`, `homepage`)."""
        def text(key: str) -> str | None:
            value = answer.get(key)
            return value if isinstance(value, str) and value else None

        licenses = answer.get("licenses")
        known = None
        if isinstance(licenses, list) and licenses and all(isinstance(x, str) and x for x in licenses):
            known = tuple(licenses)
        return cls(pname=text("pname"), version=text("version"), licenses=known, homepage=text("homepage"))


def split_name(path: str) -> tuple[str, str | None]:
    """(name, version) of a store path, as `builtins.parseDrvName` splits `<hash>-<name>-<version>`."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    name = base.split("-", 1)[1] if "-" in base else base
    match = _VERSION_START.search(name)
    if match is None:
        return name, None
    return name[: match.start()], name[match.end():]


def spdx_id(path: str) -> str:
    """The SPDX identifier of a store path: `SPDXRef-nix-<its store hash>`."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return "SPDXRef-nix-" + _NOT_ID.sub("-", base.split("-", 1)[0])


def created_at(timestamp: int | None) -> datetime:
    """The document's creation time: the locked revision's `lastModified`, else the Unix epoch."""
    return datetime.fromtimestamp(timestamp or 0, UTC).replace(tzinfo=None)


def _content_hash(closure: Sequence[ClosurePath], out_path: str, top: PackageFacts, name: str,
                  created: datetime) -> str:
    facts = {
        "name": name,
        "created": created.isoformat(),
        "top": [out_path, top.pname, top.version, list(top.licenses or ()), top.homepage],
        "closure": sorted([info.path, info.nar_hash, sorted(info.references)] for info in closure),
    }
    return hashlib.sha256(canonical_json(facts)).hexdigest()


def build_document(closure: Sequence[ClosurePath], out_path: str, top: PackageFacts, name: str,
                   created: datetime) -> Document:
    """The spdx-tools Document of `closure`, describing `out_path` (a member of it)."""
    paths = {info.path for info in closure}
    if out_path not in paths:
        raise ValueError(f"{out_path!r} is not in its own closure")
    packages = []
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, spdx_id(out_path))]
    for info in sorted(closure, key=lambda info: info.path):
        store_name, store_version = split_name(info.path)
        package = Package(
            spdx_id=spdx_id(info.path),
            name=store_name,
            version=store_version,
            file_name=info.path,
            download_location=SpdxNoAssertion(),
            files_analyzed=False,
            checksums=[Checksum(ChecksumAlgorithm.SHA256, nar_hash_hex(info.nar_hash))] if info.nar_hash else [],
            license_concluded=SpdxNoAssertion(),
            license_declared=SpdxNoAssertion(),
            copyright_text=SpdxNoAssertion(),
            homepage=SpdxNoAssertion(),
            comment="Nix store path; the SHA256 checksum is its narHash (the hash of its NAR serialisation)",
        )
        if info.path == out_path:
            package.name = top.pname or store_name
            package.version = top.version or store_version
            if top.homepage:
                package.homepage = top.homepage
            if top.licenses:
                try:
                    package.license_declared = get_spdx_licensing().parse(
                        " AND ".join(top.licenses), validate=True, strict=True)
                except Exception:  # an id SPDX doesn't know: say nothing rather than something wrong
                    package.license_declared = SpdxNoAssertion()
        packages.append(package)
        for reference in sorted(set(info.references)):
            if reference != info.path and reference in paths:
                relationships.append(
                    Relationship(spdx_id(info.path), RelationshipType.DEPENDS_ON, spdx_id(reference)))
    creation = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name=name,
        document_namespace=NAMESPACE_BASE + _content_hash(closure, out_path, top, name, created),
        creators=[Actor(ActorType.TOOL, TOOL)],
        created=created,
    )
    return Document(creation, packages=packages, relationships=relationships)


def spdx_sbom(closure: Sequence[ClosurePath], out_path: str, top: PackageFacts, name: str,
              created: datetime) -> bytes:
    """The SPDX 2.3 JSON bytes of `closure`'s bill of materials (same inputs, same bytes)."""
    document = build_document(closure, out_path, top, name, created)
    return canonical_json(DocumentConverter().convert(document))
