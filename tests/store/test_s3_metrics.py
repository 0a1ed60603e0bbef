"""S3Collector: S3 requests by operation and outcome, their seconds, lease takeovers; read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from nixforge.store.record_leases import RecordLeases
from nixforge.store.records import MemoryRecordStore
from nixforge.store.s3_client import S3Calls, S3Location
from nixforge.store.s3_metrics import S3Collector
from nixforge.store.s3_records import S3RecordStore


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_requests_are_counted_by_operation_and_outcome(s3_calls: S3Calls, s3_location: S3Location) -> None:
    leases = RecordLeases(MemoryRecordStore(), ttl=0)
    registry = CollectorRegistry()
    registry.register(S3Collector(s3_calls, [("gc", leases)]))
    before_put = sample(registry, "nixforge_s3_requests_total", operation="put_object", outcome="ok")
    before_412 = sample(registry, "nixforge_s3_requests_total", operation="put_object", outcome="412")
    records = S3RecordStore(s3_calls, s3_location)
    records.put("a.json", b"{}")
    assert records.swap("a.json", b"{}", None) is None  # a failed condition: 412
    assert sample(registry, "nixforge_s3_requests_total", operation="put_object", outcome="ok") == before_put + 1
    assert sample(registry, "nixforge_s3_requests_total", operation="put_object", outcome="412") == before_412 + 1
    assert sample(registry, "nixforge_s3_request_seconds_total", operation="put_object", outcome="ok") > 0
    other = RecordLeases(leases.records, ttl=0)
    assert other.acquire("gc") is not None
    assert leases.acquire("gc") is None and leases.acquire("gc") is not None  # seen, then expired (ttl 0)
    assert sample(registry, "nixforge_lease_takeovers_total", lease="gc") == 1
    assert b"nixforge_s3_requests_total{" in generate_latest(registry)
