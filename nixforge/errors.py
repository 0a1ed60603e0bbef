"""Domain errors shared by every layer; the API maps them to OCI error responses."""

from __future__ import annotations

from typing import Self


class ForgeError(Exception):
    """Base class of every error nixforge reports to a client."""

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def fresh(self) -> Self:
        """A new error of the same class and fields, with no traceback, `__context__` or `__cause__`.

        Hand one out each time a kept error is answered again: raising the kept object itself would
        lengthen its traceback on every raise, and each frame on it keeps its locals (requests too).
        """
        clone = type(self).__new__(type(self), *self.args)
        clone.__dict__.update(self.__dict__)
        return clone


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


class NoBuilder(ForgeError):
    """Nix may build nothing here (`max-jobs` 0) and no remote builder can take the build now.

    Not remembered as a failed build: the client should retry after `retry_after` seconds, when a
    builder may be back.
    """

    def __init__(self, message: str, retry_after: int = 30, detail: object = None) -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after


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


class StoreUnavailable(StoreFull):
    """The object store did not answer (unreachable, slow, 5xx); the client should retry soon."""

    def __init__(self, message: str, retry_after: int = 5, detail: object = None) -> None:
        super().__init__(message, retry_after, detail)
