"""Turn a build target and a flake reference into a stored image: Nix builds it, oci/ assembles it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nixforge.errors import BuildFailed, BuildTimedOut, ManifestUnknown, NameUnknown
from nixforge.images.targets import BuildTarget
from nixforge.nix.client import NixAttributeMissing, NixClient, NixError, NixRefUnknown, NixTimeout
from nixforge.oci.closure_image import PackageMeta, assemble_closure_image
from nixforge.oci.documents import ImageManifests
from nixforge.oci.ingest import ingest_image, ingest_stream
from nixforge.oci.layer_cache import LayerCache
from nixforge.store.interfaces import IBlobStore

log = Logger()

# Asked of a package before building it: does the flake give it an image, and what does it run?
PACKAGE_PROBE = (
    "p: { hasImage = p ? image; mainProgram = p.meta.mainProgram or null;"
    " pname = p.pname or p.name or null; }"
)


@define(eq=False)
class ImageBuilder:
    """Build one image; blocking assembly work goes through `run_in_thread`."""

    nix: NixClient
    store: IBlobStore
    layer_cache: LayerCache
    run_in_thread: Callable[..., Deferred[Any]]
    max_layers: int = 100

    async def build(self, target: BuildTarget, flake_ref: str, tag: str) -> ImageManifests:
        """Build `target` from `flake_ref`, store its blobs and both manifests, and return them.

        The flake is locked first (`nix flake metadata`), and every later nix command uses the
        locked reference, so one image comes from one revision even while a branch moves.
        """
        try:
            metadata = await self.nix.metadata(flake_ref)
            locked = metadata.get("url") if isinstance(metadata.get("url"), str) else flake_ref
            labels = _labels(target, flake_ref, metadata)
            if target.kind == "application":
                return await self._application(target, locked, labels)
            return await self._package(target, locked, labels)
        except NixAttributeMissing as error:
            raise NameUnknown(
                "the flake has no such package", {"name": target.name, "flake": flake_ref}
            ) from error
        except NixRefUnknown as error:
            if tag == "latest":
                raise BuildFailed(
                    "cannot fetch the flake", {"flake": flake_ref, "log": error.log_tail}
                ) from error
            raise ManifestUnknown("no such tag in the flake", {"tag": tag, "flake": flake_ref}) from error
        except NixTimeout as error:
            raise BuildTimedOut(
                f"build timed out after {error.timeout:g} seconds", {"log": error.log_tail}
            ) from error
        except NixError as error:
            raise BuildFailed("nix build failed", {"log": error.log_tail}) from error

    async def _package(self, target: BuildTarget, flake_ref: str, labels: dict[str, str]) -> ImageManifests:
        installable = f"{flake_ref}#{target.attribute}"
        probe = await self.nix.eval_json(installable, apply=PACKAGE_PROBE)
        if not isinstance(probe, dict):
            raise BuildFailed("unexpected answer from nix eval", {"answer": repr(probe)[:200]})
        if probe.get("hasImage"):
            outputs = await self.nix.build(installable + ".image")
            return await self.run_in_thread(self._ingest, outputs[0], labels)
        outputs = await self.nix.build(installable)
        closure = await self.nix.closure(outputs[0])
        meta = PackageMeta(
            name=target.attribute,
            out_path=outputs[0],
            main_program=probe.get("mainProgram") if isinstance(probe.get("mainProgram"), str) else None,
            labels=labels,
        )
        return await self.run_in_thread(self._assemble, closure, meta)

    async def _application(self, target: BuildTarget, flake_ref: str, labels: dict[str, str]) -> ImageManifests:
        outputs = await self.nix.build(f"{flake_ref}#{target.attribute}.containers")
        assert target.image_file is not None
        path = os.path.join(outputs[0], target.image_file)
        if not os.path.exists(path):
            raise NameUnknown(
                "the application has no such container image",
                {"name": target.name, "file": target.image_file},
            )
        return await self.run_in_thread(self._ingest, os.path.realpath(path), labels)

    def _ingest(self, path: str, labels: dict[str, str]) -> ImageManifests:
        """Worker thread: ingest a flake-built image and store both manifests.

        A streamLayeredImage output is a script that writes the docker-archive to stdout: it is run
        (argv, no shell) and its output ingested as it streams.
        """
        if _is_script(path):
            return self._stored(_ingest_script_output(self.store, path, labels))
        return self._stored(ingest_image(self.store, path, labels))

    def _assemble(self, closure: Any, meta: PackageMeta) -> ImageManifests:
        """Worker thread: assemble an image from a closure and store both manifests."""
        try:
            manifests = assemble_closure_image(self.store, self.layer_cache, closure, meta, self.max_layers)
        except (ValueError, OSError) as error:
            raise BuildFailed("cannot assemble the image from the closure", {"error": str(error)}) from error
        return self._stored(manifests)

    def _stored(self, manifests: ImageManifests) -> ImageManifests:
        self.store.put(manifests.oci.body)
        self.store.put(manifests.docker.body)
        return manifests


def _is_script(path: str) -> bool:
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return False
    with open(path, "rb") as stream:
        return stream.read(2) == b"#!"


def _ingest_script_output(store: IBlobStore, path: str, labels: dict[str, str]) -> ImageManifests:
    """Run a streamLayeredImage script and ingest the archive it writes (worker thread)."""
    with subprocess.Popen([path], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        try:
            manifests = ingest_stream(store, process.stdout, labels)
        except BaseException:
            process.kill()
            raise
        if process.wait() != 0:
            raise BuildFailed("the image script failed", {"script": path, "status": process.returncode})
    return manifests


def _labels(target: BuildTarget, flake_ref: str, metadata: dict[str, object]) -> dict[str, str]:
    """OCI annotations/labels that say where an image came from (the revision when git-locked)."""
    labels = {
        "org.opencontainers.image.source": flake_ref,
        "org.opencontainers.image.title": target.name,
    }
    locked = metadata.get("locked")
    revision = metadata.get("revision") or (locked.get("rev") if isinstance(locked, dict) else None)
    if isinstance(revision, str):
        labels["org.opencontainers.image.revision"] = revision
    return labels
