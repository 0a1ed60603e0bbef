"""Prometheus metrics of the registry, in their own CollectorRegistry, served at GET /metrics.

Counting happens in two places only: the request observer (`nixforge.api.access_log`) for HTTP
series and blob bytes, and `BuildMetrics` (an IBuildObserver) for builds. Gauges of state the
service already keeps (builds running and queued, the manifest cache, GC and the store) are read
when Prometheus scrapes, so they cost the hot paths nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from zope.interface import implementer

from nixforge.images.build_events import BuildStart, IBuildObserver

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUILD_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600)
# A client may send any method: anything else is counted as OTHER, so the label stays bounded.
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class _StateCollector(Collector):
    """Read, at scrape time, what the image service and the GC scheduler already count."""

    def __init__(self, images: Any, gc: Any) -> None:
        self._images = images
        self._gc = gc

    def collect(self) -> Iterator[Any]:
        """Yield the gauges and counters of the service's own state."""
        yield GaugeMetricFamily("nixforge_builds_running", "Builds holding a build slot.",
                                value=self._images.builds_running)
        yield GaugeMetricFamily("nixforge_builds_queued", "Builds waiting for a build slot.",
                                value=self._images.builds_queued)
        yield CounterMetricFamily("nixforge_manifest_cache_hits", "Manifests served from memory.",
                                  value=self._images.manifest_cache_hits)
        yield CounterMetricFamily("nixforge_manifest_cache_misses", "Manifest look-ups the memory cache missed.",
                                  value=self._images.manifest_cache_misses)
        if self._gc is None:
            return
        yield CounterMetricFamily("nixforge_gc_runs", "Completed GC runs.", value=self._gc.runs)
        yield CounterMetricFamily("nixforge_gc_freed_bytes", "Bytes GC deleted from the blob store.",
                                  value=self._gc.bytes_freed)
        yield GaugeMetricFamily("nixforge_store_bytes", "Bytes in the blob store (as of the last GC run or build).",
                                value=self._gc.store_bytes)
        cap = self._gc.collector.max_size
        yield GaugeMetricFamily("nixforge_store_cap_bytes", "NIXFORGE_MAX_STORE_SIZE in bytes (0: no cap).",
                                value=cap or 0)
        yield GaugeMetricFamily("nixforge_store_blobs", "Blobs in the blob store (as of the last GC run or build).",
                                value=self._gc.store_blobs)

    def describe(self) -> list[Any]:
        """Nothing to check at registration (the values are read at scrape time)."""
        return []


class RegistryMetrics:
    """Every series of nixforge, registered in one CollectorRegistry of its own."""

    def __init__(self, images: Any, gc: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.builds = Counter("nixforge_builds", "Builds ended, by outcome.", ["outcome"], registry=self.registry)
        self.build_seconds = Histogram("nixforge_build_duration_seconds", "Time builds spend in each phase.",
                                       ["phase"], buckets=BUILD_BUCKETS, registry=self.registry)
        self.requests = Counter("nixforge_http_requests", "HTTP requests answered, by route template.",
                                ["method", "route", "code"], registry=self.registry)
        self.request_seconds = Histogram("nixforge_http_request_duration_seconds",
                                         "Time from request to the last byte of the answer, by route template.",
                                         ["route"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.blob_bytes = Counter("nixforge_blob_sent_bytes", "Blob bytes sent to clients.", registry=self.registry)
        self.registry.register(_StateCollector(images, gc))
        for outcome in ("success", "failure", "timeout"):
            self.builds.labels(outcome)  # every outcome shows, at 0, before the first build ends

    def request_done(self, method: str, route: str, code: int, seconds: float) -> None:
        """Count one answered request."""
        method = method if method in KNOWN_METHODS else "OTHER"
        self.requests.labels(method, route, str(code)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every series."""
        return generate_latest(self.registry)


@implementer(IBuildObserver)
class BuildMetrics:
    """Turn build events into the builds counter and the per-phase duration histogram."""

    def __init__(self, metrics: RegistryMetrics) -> None:
        self._metrics = metrics
        self._since: dict[str, float] = {}

    def build_started(self, start: BuildStart) -> None:
        """Observe the plan phase; the build now queues."""
        self._metrics.build_seconds.labels("plan").observe(start.plan_seconds)
        self._since[start.id] = start.started

    def build_phase(self, build_id: str, phase: str, at: float) -> None:
        """Observe how long it queued."""
        since = self._since.get(build_id)
        if since is not None:
            self._metrics.build_seconds.labels("queued").observe(max(0.0, at - since))
        self._since[build_id] = at

    def build_line(self, build_id: str, line: str) -> None:
        """Lines are not counted."""

    def build_finished(self, build_id: str, outcome: str, finished: float, error: str | None) -> None:
        """Count the outcome; observe the build phase."""
        since = self._since.pop(build_id, None)
        if since is not None:
            self._metrics.build_seconds.labels("build").observe(max(0.0, finished - since))
        self._metrics.builds.labels(outcome).inc()
