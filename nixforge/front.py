"""The HTTP front of the registry: authentication, the request observer, the edge site, the caps."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.web.resource import IResource

from nixforge import logs
from nixforge.api.access_log import ObservedResource
from nixforge.api.auth import Authenticator, AuthResource
from nixforge.api.connection_caps import ConnectionCaps
from nixforge.api.copy_threads import CopyThreads
from nixforge.api.edge import EdgeSite
from nixforge.api.htpasswd import HtpasswdFile
from nixforge.api.metrics import RegistryMetrics
from nixforge.api.plain_http import RefuseTLSFactory
from nixforge.api.refresh import body_limit as refresh_body_limit
from nixforge.config import ForgeConfig
from nixforge.listening import ListeningService
from nixforge.refresh_access import RefreshAccess


class _FlushAtStop(Service):
    """Write the access-log lines still waiting when the registry stops."""

    def __init__(self, lines: logs.BatchedLines) -> None:
        self.lines = lines

    def stopService(self) -> None:
        super().stopService()
        self.lines.stop()


def _blob_copier(config: ForgeConfig, reactor: Any) -> CopyThreads | None:
    """The copy threads of blob bodies (NIXFORGE_SEND_THREADS, NIXFORGE_BLOB_COPY), or None for none."""
    if config.send_threads == 0:
        return None
    return CopyThreads(reactor.callFromThread, max_threads=config.send_threads, mode=config.blob_copy)


def _with_auth(resource: IResource, config: ForgeConfig, run_in_thread: Any, reactor: Any) -> IResource:
    """The API behind HTTP Basic authentication when an htpasswd file is configured."""
    if not config.htpasswd:
        return resource
    htpasswd = HtpasswdFile(config.htpasswd, run_in_thread, reactor)
    htpasswd.load()
    return AuthResource(resource, Authenticator(htpasswd, run_in_thread, reactor))


def _observed(resource: IResource, config: ForgeConfig, metrics: RegistryMetrics | None, reactor: Any,
              root: MultiService) -> IResource:
    """The site behind the request observer (access log, HTTP metrics) unless both are off.

    Access-log lines are written in batches (within half a second, and at shutdown).
    """
    if metrics is None and not config.access_log:
        return resource
    namespace = "nixforge.api.access_log"
    lines = logs.BatchedLines(reactor, namespace, fallback=Logger(namespace=namespace))
    _FlushAtStop(lines).setServiceParent(root)
    return ObservedResource(resource, reactor, metrics, access_log=config.access_log, lines=lines)


def refresh_access(config: ForgeConfig) -> RefreshAccess:
    """Who may POST /-/refresh: with authentication on, every authenticated client; else NIXFORGE_REFRESH_FROM."""
    return RefreshAccess(("any",)) if config.htpasswd else RefreshAccess(config.refresh_from)


def serve(config: ForgeConfig, api: IResource, metrics: RegistryMetrics | None, run_in_thread: Any, reactor: Any,
          root: MultiService) -> None:
    """Listen on the configured endpoint with the API behind authentication, the observer, the edge and the caps."""
    endpoint = endpoints.serverFromString(reactor, config.endpoint)
    observed = _observed(_with_auth(api, config, run_in_thread, reactor), config, metrics, reactor, root)
    site = EdgeSite(observed,
                    header_timeout=config.header_timeout, send_timeout=config.send_timeout, reactor=reactor,
                    body_limit=refresh_body_limit, blob_copier=_blob_copier(config, reactor))
    factory = ConnectionCaps(site if config.endpoint.startswith("ssl:") else RefuseTLSFactory(site),
                             config.max_connections, config.max_client_connections)
    ListeningService(endpoint, factory).setServiceParent(root)
