"""Prometheus series of the S3 store, read at scrape time: requests by operation and outcome, leases."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from nixforge.store.record_leases import RecordLeases
from nixforge.store.s3_client import S3Calls


class S3Collector(Collector):
    """`nixforge_s3_requests` and their seconds by (operation, outcome); lease takeovers by lease kind."""

    def __init__(self, calls: S3Calls, leases: Sequence[tuple[str, RecordLeases]] = ()) -> None:
        self.calls = calls
        self.leases = tuple(leases)

    def collect(self) -> Iterator[Any]:
        """Yield the counters (no request is made)."""
        requests = CounterMetricFamily("nixforge_s3_requests", "S3 requests, by operation and outcome "
                                       "(ok, an HTTP status, or unreachable).", labels=["operation", "outcome"])
        seconds = CounterMetricFamily("nixforge_s3_request_seconds", "Seconds spent in S3 requests, by operation "
                                      "and outcome.", labels=["operation", "outcome"])
        for (operation, outcome), stats in sorted(self.calls.stats.copy().items()):
            requests.add_metric([operation, outcome], stats.count)
            seconds.add_metric([operation, outcome], stats.seconds)
        yield requests
        yield seconds
        takeovers = CounterMetricFamily("nixforge_lease_takeovers", "Leases this replica took over after "
                                        "their holder stopped renewing them.", labels=["lease"])
        for kind, leases in self.leases:
            takeovers.add_metric([kind], leases.takeovers)
        yield takeovers

    def describe(self) -> list[Any]:
        """Nothing to check at registration (the values are read at scrape time)."""
        return []
