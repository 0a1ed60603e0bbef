"""Turn Nix's failures into the registry's errors: what a client is told when Nix could not do it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from nixforge.errors import BuildFailed, BuildTimedOut, ForgeError, ManifestUnknown, NameUnknown, NoBuilder
from nixforge.nix.client import NixAttributeMissing, NixError, NixNoBuilder, NixRefUnknown, NixTimeout

T = TypeVar("T")


async def mapped(step: Callable[[], Awaitable[T]], name: str, flake_ref: str, tag: str, timeout: float) -> T:
    """Run `step`, turning Nix's failures into the registry's errors for `name`:`tag` from `flake_ref`."""
    try:
        return await step()
    except NixAttributeMissing as error:
        raise NameUnknown("the flake has no such package", {"name": name, "flake": flake_ref}) from error
    except NixRefUnknown as error:
        if tag == "latest":
            raise BuildFailed("cannot fetch the flake", {"flake": flake_ref, "log": error.log_tail}) from error
        raise ManifestUnknown("no such tag in the flake", {"tag": tag, "flake": flake_ref}) from error
    except NixTimeout as error:
        log_tail = [*error.log_tail, f"killed after the {timeout:g} s build timeout"]
        raise BuildTimedOut(f"build timed out after {timeout:g} seconds", {"log": log_tail}) from error
    except NixNoBuilder as error:
        raise NoBuilder("no builder can take the build now (max-jobs is 0 and no remote builder fits)",
                        detail={"error": error.message, "log": error.log_tail}) from error
    except NixError as error:
        raise BuildFailed("nix build failed", {"error": error.message, "log": error.log_tail}) from error


async def for_system(system: str | None, step: Awaitable[T]) -> T:
    """Await `step`; a registry error it raises names `system` (when there is one)."""
    try:
        return await step
    except ForgeError as error:
        if system is None:
            raise
        detail = error.detail if isinstance(error.detail, dict) else {"detail": error.detail}
        named = error.fresh()
        named.message = f"{error.message} (system {system})"
        named.detail = {**detail, "system": system}
        named.args = (named.message,)
        raise named from error
