"""Domain errors shared by every layer; the API maps them to OCI error responses."""

from __future__ import annotations

import copy
from typing import TypeVar

E = TypeVar("E", bound="ForgeError")


class ForgeError(Exception):
    """Base class of every error nixforge reports to a client."""

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NameInvalid(ForgeError):
    """A repository name that breaks the distribution spec's grammar or length limit."""


class TagInvalid(ForgeError):
    """A tag that breaks the spec's grammar or the configured length limit."""


class DigestInvalid(ForgeError):
    """A digest that is not `algorithm:hex` of a supported algorithm."""


class NameUnknown(ForgeError):
    """The repository does not exist: no such package in the flake."""


class ManifestUnknown(ForgeError):
    """The repository exists but the tag or digest does not."""


class BlobUnknown(ForgeError):
    """No blob with that digest is stored for the repository."""


class BuildFailed(ForgeError):
    """Nix (or image assembly) failed; `detail` holds the tail of the build log."""


class BuildCancelled(BuildFailed):
    """The registry is stopping: image assembly was interrupted and nothing of it was published."""


class BuildTimedOut(ForgeError):
    """The build ran longer than the configured timeout and was killed."""


class TooManyBuilds(ForgeError):
    """The build queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int, detail: object = None) -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after


class StoreFull(ForgeError):
    """The blob store's disk is full (ENOSPC/EDQUOT); the client should retry after GC has run."""

    def __init__(self, message: str, retry_after: int = 30, detail: object = None) -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after


class BuildInProgress(ForgeError):
    """The image is still being built after the pull wait; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int, detail: object = None) -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after


def fresh_copy(error: E) -> E:
    """A new exception like `error` (class, message, detail, retry_after) with no traceback or context.

    An error kept to be raised again is raised as such a copy: raising the kept object itself would
    grow its traceback with each raise, and keep every frame (and request) on it alive.
    """
    twin = Exception.__new__(type(error))
    twin.args = error.args
    twin.__dict__.update(copy.copy(error.__dict__))
    return twin
