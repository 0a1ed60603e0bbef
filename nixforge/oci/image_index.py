"""Image indexes (OCI) and manifest lists (Docker) over one image per Nix system, and their platforms."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from attrs import frozen

from nixforge.oci import media_types as mt
from nixforge.oci.documents import ImageManifests, ManifestDocument, canonical_json
from nixforge.oci.referrers import descriptor, subject_digest
from nixforge.store.interfaces import IBlobStore

# A Nix system: `<cpu>-<kernel>`, e.g. x86_64-linux, aarch64-linux, armv7l-linux.
SYSTEM = re.compile(r"[a-z0-9_]+-[a-z0-9_]+")
# Nix's cpu name → (OCI architecture, variant).
_CPUS: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "i686": ("386", None),
    "aarch64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "powerpc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}
_KERNELS = {"linux": "linux"}


@frozen
class Platform:
    """An OCI platform: os, architecture and (for arm) variant."""

    os: str
    architecture: str
    variant: str | None = None

    def as_json(self) -> dict[str, str]:
        """The `platform` object of an index entry (and the same keys of an image config)."""
        value = {"architecture": self.architecture, "os": self.os}
        if self.variant is not None:
            value["variant"] = self.variant
        return value


def platform_for(system: str) -> Platform:
    """The OCI platform of a Nix system; ValueError for one that is malformed or has no OCI name."""
    if not SYSTEM.fullmatch(system):
        raise ValueError(f"not a Nix system (<cpu>-<kernel>): {system!r}")
    cpu, _, kernel = system.partition("-")
    if cpu not in _CPUS or kernel not in _KERNELS:
        known = ", ".join(f"{name}-linux" for name in _CPUS)
        raise ValueError(f"no OCI platform for the Nix system {system!r} (known: {known})")
    architecture, variant = _CPUS[cpu]
    return Platform(_KERNELS[kernel], architecture, variant)


def config_mismatch(store: IBlobStore, image: ImageManifests, platform: Platform) -> str | None:
    """Say how a stored image's config contradicts `platform` (os, architecture, variant); None if not.

    A key the config leaves out contradicts nothing (a flake's arm64 image often names no variant).
    """
    config = json.loads(store.read(json.loads(image.oci.body)["config"]["digest"]))
    for key, expected in platform.as_json().items():
        found = config.get(key) if isinstance(config, dict) else None
        if found is not None and found != expected:
            return f"its config says {key} {found!r}, the system needs {expected!r}"
    return None


def build_index(members: Sequence[tuple[Platform, ImageManifests]], host: int | None) -> ImageManifests:
    """The OCI image index and the Docker manifest list of `members` (in the given order)."""
    oci = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [{**descriptor(images.oci), "platform": platform.as_json()} for platform, images in members],
    }
    docker = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST_LIST,
        "manifests": [{**descriptor(images.docker), "platform": platform.as_json()}
                      for platform, images in members],
    }
    return ImageManifests(
        oci=ManifestDocument(mt.OCI_INDEX, canonical_json(oci)),
        docker=ManifestDocument(mt.DOCKER_MANIFEST_LIST, canonical_json(docker)),
        members=tuple(images for _, images in members),
        host=host,
    )


def stored_manifests(
    oci: ManifestDocument, docker: ManifestDocument, related: Sequence[ManifestDocument], host: Platform | None
) -> ImageManifests:
    """Put a stored tag's documents back together: an image with its referrers, or an index.

    `related` holds the members and artifacts (`TagRecord.manifests`); the host member is the one
    whose platform is `host`, else the first.
    """
    by_digest = {document.digest: document for document in related}

    def image(oci_form: ManifestDocument, docker_form: ManifestDocument) -> ImageManifests:
        subjects = {oci_form.digest, docker_form.digest}
        return ImageManifests(oci_form, docker_form, referrers=tuple(
            document for document in related if subject_digest(document) in subjects))

    if oci.media_type != mt.OCI_INDEX:
        return image(oci, docker)
    oci_entries = json.loads(oci.body).get("manifests", [])
    docker_entries = json.loads(docker.body).get("manifests", [])
    if len(oci_entries) != len(docker_entries):
        raise ValueError("the stored index and manifest list disagree")
    members, platforms = [], []
    for oci_entry, docker_entry in zip(oci_entries, docker_entries, strict=True):
        members.append(image(by_digest[oci_entry["digest"]], by_digest[docker_entry["digest"]]))
        platforms.append(oci_entry.get("platform"))
    wanted = host.as_json() if host is not None else None
    host_index = platforms.index(wanted) if wanted in platforms else 0
    return ImageManifests(oci, docker, members=tuple(members), host=host_index)
