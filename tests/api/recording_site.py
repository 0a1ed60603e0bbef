"""A real twisted.web Site that remembers its requests, for tests over real loopback TCP."""

from __future__ import annotations

from twisted.web.server import Request, Site


class RecordingSite(Site):
    """A Site that remembers its requests."""

    def __init__(self, resource: object) -> None:
        super().__init__(resource)
        self.requests: list[Request] = []
        site = self

        class _Request(Request):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                site.requests.append(self)

        self.requestFactory = _Request
